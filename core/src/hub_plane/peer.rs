//! One spoke's link as the hub's data plane holds it: its tunnels (built
//! only while the spoke is around), its keys, where it is, what it carried,
//! and how a packet is sealed to it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::batch::Outbox;
use crate::keys::{KeyEpoch, PublicKey, StaticKey};
use crate::link::{Link, Sealed};
use crate::rotation::Usage;
use crate::routing::{DropReason, SpokeId};
use boringtun::noise::rate_limiter::RateLimiter;

/// The hub's state for one spoke link.
pub(super) struct Peer {
    /// The WireGuard tunnels, one per epoch; empty while the spoke is away
    /// (built from `keys` when it next handshakes), which keeps a hub with
    /// thousands of enrolled but absent spokes small.
    pub(super) link: Link,
    /// The keys of the epochs the spoke may use now.
    pub(super) keys: Vec<KeyEpoch>,
    /// Timer ticks since the link last did anything; its tunnels are
    /// dropped once they hold no session and this reaches `IDLE_TICKS`.
    pub(super) quiet_ticks: u32,
    /// The epoch that carried traffic last: tunnels built again take it as
    /// confirmed, so a handshake the hub starts is under the epoch the
    /// spoke answers on, not a newer one it has not switched to.
    pub(super) resume: u64,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) handshake_epochs: Vec<u64>,
    pub(super) carry: bool,
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
    pub(super) packets: u64,
    pub(super) handshakes: u64,
    /// An initiation was answered and no data has come under it yet: a
    /// further initiation means the peer could not open the answer.
    pub(super) answer_unconfirmed: bool,
}

/// Where a packet sealed to a spoke went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Encrypted into the outbox.
    Sent,
    /// Held in the spoke's tunnel until its session is up (a handshake
    /// initiation went out, or one is under way).
    Held,
}

impl Peer {
    /// A link with nothing in it yet.
    pub(super) fn new(id: SpokeId, public_key: PublicKey) -> Self {
        Peer {
            link: Link::new(id, public_key, 0),
            keys: Vec::new(),
            quiet_ticks: 0,
            resume: 0,
            endpoint: None,
            handshake_epochs: Vec::new(),
            carry: false,
            rx_bytes: 0,
            tx_bytes: 0,
            packets: 0,
            handshakes: 0,
            answer_unconfirmed: false,
        }
    }

    /// Builds the tunnels of an idle link again from its keys.
    pub(super) fn wake(&mut self, own: &StaticKey, limiter: &Arc<RateLimiter>) {
        if self.link.is_empty() {
            for epoch in &self.keys {
                self.link.install(own, epoch, Some(limiter.clone()));
            }
            if self.resume > 0 {
                self.link.confirm(self.resume);
            }
        }
    }

    /// Drops an idle link's tunnels, remembering the epoch that carried its
    /// traffic for [`Peer::wake`]; returns the packets lost with them.
    pub(super) fn rest(&mut self) -> u32 {
        self.resume = self.resume.max(self.link.confirmed_epoch().unwrap_or(0));
        self.link.retain(|_| false)
    }

    /// What the link carried, for the rotation policy.
    pub(super) fn usage(&self) -> Usage {
        Usage {
            packets: self.packets,
            bytes: self.rx_bytes + self.tx_bytes,
            handshakes: self.handshakes,
        }
    }

    /// Encrypts an inner packet to this spoke into the outbox, or holds it
    /// for the tunnel's handshake, or says why it cannot go.
    pub(super) fn seal(
        &mut self,
        packet: &[u8],
        out: &mut Outbox<SocketAddr>,
        (own, limiter): (&StaticKey, &Arc<RateLimiter>),
    ) -> Result<Delivery, DropReason> {
        if !self.carry {
            return Err(DropReason::NotLoggedIn);
        }
        let endpoint = self.endpoint.ok_or(DropReason::NoSession)?;
        self.wake(own, limiter);
        self.quiet_ticks = 0;
        let tunnel = self.link.for_sending().ok_or(DropReason::NoSession)?;
        let (sent, delivery) = match tunnel.seal(packet, out, endpoint)? {
            Sealed::Sent(len) => (Some(len), Delivery::Sent),
            Sealed::Waiting(initiation) => (initiation, Delivery::Held),
        };
        if let Some(len) = sent {
            self.tx_bytes += len as u64;
            self.packets += 1;
        }
        Ok(delivery)
    }
}

/// Seals a packet to the spoke of a route, or says why not (no such spoke).
pub(super) fn seal_to(
    peer: Option<&mut Peer>,
    packet: &[u8],
    out: &mut Outbox<SocketAddr>,
    keys: (&StaticKey, &Arc<RateLimiter>),
) -> Result<Delivery, DropReason> {
    peer.ok_or(DropReason::NoRoute)?.seal(packet, out, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    /// An idle link's tunnels are dropped and built again: the epoch that
    /// carried traffic is still the one the hub sends under, not a newer
    /// one the spoke holds but has not switched to.
    #[test]
    fn a_rebuilt_link_sends_under_the_epoch_that_carried_traffic() {
        let hub = StaticKey::generate(&mut OsRng);
        let spoke = StaticKey::generate(&mut OsRng);
        let limiter = Arc::new(RateLimiter::new(&hub.public().to_x25519(), 10));
        let mut peer = Peer::new(1, spoke.public());
        peer.keys = (1..=3).map(|k| KeyEpoch::issue(k, 0, &mut OsRng)).collect();
        peer.resume = 2;
        peer.handshake_epochs = vec![2, 3];
        peer.carry = true;
        peer.wake(&hub, &limiter);
        assert_eq!(peer.link.epochs(), vec![1, 2, 3]);
        assert_eq!(peer.link.for_sending().map(|t| t.epoch), Some(2));
        // Traffic moved to epoch 3, then the link went quiet and was dropped.
        peer.link.confirm(3);
        assert_eq!(peer.rest(), 0);
        assert!(peer.link.is_empty());
        peer.wake(&hub, &limiter);
        assert_eq!(peer.link.for_sending().map(|t| t.epoch), Some(3));
    }

    /// A packet to a spoke whose tunnel has no session is held (behind one
    /// handshake initiation), not lost unseen; a spoke with no endpoint or
    /// no login refuses it with the reason to count.
    #[test]
    fn a_packet_without_a_session_is_held_or_refused_with_a_reason() {
        let hub = StaticKey::generate(&mut OsRng);
        let spoke = StaticKey::generate(&mut OsRng);
        let limiter = Arc::new(RateLimiter::new(&hub.public().to_x25519(), 10));
        let mut peer = Peer::new(1, spoke.public());
        peer.keys = vec![KeyEpoch::issue(1, 0, &mut OsRng)];
        let mut out = Outbox::new();
        let packet = [0x45u8; 84];
        let keys = (&hub, &limiter);
        assert_eq!(
            peer.seal(&packet, &mut out, keys),
            Err(DropReason::NotLoggedIn)
        );
        peer.carry = true;
        assert_eq!(
            peer.seal(&packet, &mut out, keys),
            Err(DropReason::NoSession)
        );
        peer.endpoint = Some("192.0.2.7:4000".parse().unwrap());
        assert_eq!(peer.seal(&packet, &mut out, keys), Ok(Delivery::Held));
        assert_eq!(out.len(), 1, "one handshake initiation");
        assert_eq!(peer.seal(&packet, &mut out, keys), Ok(Delivery::Held));
        assert_eq!(out.len(), 1, "no second initiation while one is under way");
        assert_eq!(peer.link.for_sending().map(|t| t.waiting()), Some(2));
        // Dropping the link's tunnels reports the packets that waited.
        assert_eq!(peer.rest(), 2);
    }
}
