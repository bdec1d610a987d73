//! The data-plane state of one link (spoke ↔ hub): one WireGuard tunnel per
//! key epoch.
//!
//! boringtun's `Tunn` cannot change its preshared key, so every epoch gets its
//! own `Tunn` with its own index. The 24-bit WireGuard index of a tunnel is
//! `link slot << 4 | epoch mod 16`; boringtun shifts it left by 8 for its
//! sessions, so a receiver index names link and epoch at once (O(1) demux).
//!
//! `Tunn` reads the clock and the OS RNG itself; its timers are exercised by
//! the netns tests, tasuki's own rules by the unit tests here.

use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{rate_limiter::RateLimiter, Tunn, TunnResult};

use crate::batch::Outbox;
use crate::keys::{KeyEpoch, PublicKey, StaticKey};
use crate::routing::DropReason;

/// Packets one tunnel holds while its handshake is under way (boringtun
/// keeps that many and silently drops the rest).
pub const MAX_WAITING: u32 = 256;

/// Inner packets are padded with zeros to a multiple of this many bytes
/// before encryption (never beyond the tunnel MTU), as the WireGuard
/// protocol specifies (5.4.6) and the kernel and wireguard-go do, so that
/// exact packet lengths do not show on the wire. The receiver takes the
/// length from the IP header, so padding needs nothing on its side.
pub const PADDING: usize = 16;

/// The length `len` bytes of inner packet take once padded.
pub fn padded_len(len: usize) -> usize {
    let mtu = usize::from(crate::TUNNEL_MTU);
    if len >= mtu {
        return len;
    }
    len.next_multiple_of(PADDING).min(mtu)
}

/// Bits of the tunnel index that hold the epoch.
const EPOCH_BITS: u32 = 4;
/// Largest link slot that fits the 24-bit tunnel index.
pub const MAX_SLOT: u32 = (1 << (24 - EPOCH_BITS)) - 1;

/// The tunnel index for `slot` and `epoch` (must be ≤ [`MAX_SLOT`]).
pub fn tunnel_index(slot: u32, epoch: u64) -> u32 {
    ((slot & MAX_SLOT) << EPOCH_BITS) | (epoch as u32 & ((1 << EPOCH_BITS) - 1))
}

/// The link slot named by a receiver index seen on the wire.
pub fn slot_of_receiver(receiver_index: u32) -> u32 {
    receiver_index >> (8 + EPOCH_BITS)
}

/// One epoch's WireGuard tunnel.
pub struct EpochTunnel {
    /// Epoch number.
    pub epoch: u64,
    /// Its tunnel index.
    pub index: u32,
    /// boringtun's tunnel (boxed: it is about 11 KB, and links sort and
    /// drop their tunnels).
    pub tunn: Box<Tunn>,
    /// True once the peer proved it runs a session under this epoch (a data
    /// packet decrypted, or our handshake was answered). Only then does
    /// traffic switch to it.
    pub confirmed: bool,
    /// Packets sealed while the tunnel had no session: they wait inside it
    /// for the handshake, and are lost if it never completes.
    waiting: u32,
}

/// What [`EpochTunnel::seal`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// Encrypted into the outbox as a datagram of this many bytes.
    Sent(usize),
    /// Held until the tunnel's session is up; `Some(len)`: a handshake
    /// initiation of `len` bytes went into the outbox.
    Waiting(Option<usize>),
}

/// What [`EpochTunnel::tick`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to do.
    Idle,
    /// Send the datagram of this many bytes that starts the buffer (a
    /// keepalive or a handshake initiation).
    Send(usize),
    /// The handshake gave up: this many waiting packets are lost.
    Lost(u32),
}

impl EpochTunnel {
    /// True once a WireGuard session under this epoch was set up.
    pub fn has_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Packets waiting for this tunnel's session.
    pub fn waiting(&self) -> u32 {
        self.waiting
    }

    /// Encrypts `packet` into `out` for `to`, or holds it for the handshake
    /// when the tunnel has no session yet (an initiation goes into `out`
    /// when none is under way). A packet that cannot be held is refused
    /// with the reason to count.
    pub fn seal<D: Copy + PartialEq>(
        &mut self,
        packet: &[u8],
        out: &mut Outbox<D>,
        to: D,
    ) -> Result<Sealed, DropReason> {
        let padded = padded_len(packet.len());
        let mut buf: [u8; crate::TUNNEL_MTU as usize];
        let packet = if padded > packet.len() {
            buf = [0; crate::TUNNEL_MTU as usize];
            buf[..packet.len()].copy_from_slice(packet);
            &buf[..padded]
        } else {
            packet
        };
        let dst = out.spare();
        // boringtun panics on a buffer too small for the packet or a handshake.
        if dst.len() < (packet.len() + 32).max(148) {
            return Err(DropReason::Unsupported);
        }
        // With a session boringtun writes the data message (type 4);
        // without one it holds the packet and writes an initiation or nothing.
        let (sent, data) = match self.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(p) => (Some(p.len()), p.first() == Some(&4)),
            _ => (None, false),
        };
        if let Some(len) = sent {
            if !out.commit(to, len) {
                return Err(DropReason::Unsupported);
            }
        }
        match sent {
            Some(len) if data => Ok(Sealed::Sent(len)),
            // boringtun's queue is full: it dropped this one.
            _ if self.waiting >= MAX_WAITING => Err(DropReason::HandshakeTimeout),
            initiation => {
                self.waiting += 1;
                Ok(Sealed::Waiting(initiation))
            }
        }
    }

    /// Once the session is up, the next packet that waited for it, as a
    /// datagram of the returned length at the start of `dst`.
    pub fn release_waiting(&mut self, dst: &mut [u8]) -> Option<usize> {
        if !self.has_session() {
            return None;
        }
        match self.tunn.decapsulate(None, &[], dst) {
            TunnResult::WriteToNetwork(p) => {
                self.waiting = self.waiting.saturating_sub(1);
                Some(p.len())
            }
            _ => {
                // The tunnel's queue is empty.
                self.waiting = 0;
                None
            }
        }
    }

    /// Runs WireGuard's timers (call every few hundred milliseconds).
    pub fn tick(&mut self, dst: &mut [u8]) -> Tick {
        match self.tunn.update_timers(dst) {
            TunnResult::WriteToNetwork(p) => Tick::Send(p.len()),
            TunnResult::Err(WireGuardError::ConnectionExpired) if self.waiting > 0 => {
                Tick::Lost(std::mem::take(&mut self.waiting))
            }
            _ => Tick::Idle,
        }
    }
}

/// Everything the data plane holds for one peer.
pub struct Link {
    slot: u32,
    peer: PublicKey,
    keepalive: Option<u16>,
    tunnels: Vec<EpochTunnel>,
}

impl Link {
    /// A link with no epochs yet.
    pub fn new(slot: u32, peer: PublicKey, keepalive_secs: u16) -> Self {
        Self {
            slot,
            peer,
            keepalive: (keepalive_secs > 0).then_some(keepalive_secs),
            tunnels: Vec::new(),
        }
    }

    /// The peer's static key.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The link's slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Adds the tunnel for `epoch` unless it is there already.
    pub fn install(
        &mut self,
        own: &StaticKey,
        epoch: &KeyEpoch,
        limiter: Option<Arc<RateLimiter>>,
    ) {
        if self.tunnels.iter().any(|t| t.epoch == epoch.number) {
            return;
        }
        let index = tunnel_index(self.slot, epoch.number);
        // Epochs 16 apart share an index; the older one is long over (a link
        // never holds more than a few epochs), so it gives way.
        self.tunnels.retain(|t| t.index != index);
        let tunn = Box::new(Tunn::new(
            own.to_x25519(),
            self.peer.to_x25519(),
            Some(*epoch.key.expose()),
            self.keepalive,
            index,
            limiter,
        ));
        self.tunnels.push(EpochTunnel {
            epoch: epoch.number,
            index,
            tunn,
            confirmed: false,
            waiting: 0,
        });
        self.tunnels.sort_by_key(|t| t.epoch);
    }

    /// True when the link holds no tunnel.
    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// True when no tunnel holds a WireGuard session (none ever did, or
    /// every one expired).
    pub fn is_idle(&self) -> bool {
        !self.tunnels.iter().any(EpochTunnel::has_session)
    }

    /// Drops the tunnels of epochs for which `keep` is false; returns how
    /// many packets were waiting in them (lost).
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) -> u32 {
        let mut lost = 0;
        self.tunnels.retain(|t| {
            let kept = keep(t.epoch);
            if !kept {
                lost += t.waiting;
            }
            kept
        });
        lost
    }

    /// Epoch numbers with a tunnel, oldest first.
    pub fn epochs(&self) -> Vec<u64> {
        self.tunnels.iter().map(|t| t.epoch).collect()
    }

    /// The tunnel that owns a receiver index seen on the wire.
    pub fn by_receiver(&mut self, receiver_index: u32) -> Option<&mut EpochTunnel> {
        let index = receiver_index >> 8;
        self.tunnels.iter_mut().find(|t| t.index == index)
    }

    /// The newest epoch's tunnel: the one handshakes go to.
    pub fn newest(&mut self) -> Option<&mut EpochTunnel> {
        self.tunnels.last_mut()
    }

    /// The tunnel to encrypt with: the newest confirmed one, else the newest
    /// with a session, else the newest. An unconfirmed new epoch never takes
    /// traffic from a working old one: no loss at the switch.
    pub fn for_sending(&mut self) -> Option<&mut EpochTunnel> {
        let pos = self
            .tunnels
            .iter()
            .rposition(|t| t.confirmed)
            .or_else(|| self.tunnels.iter().rposition(EpochTunnel::has_session))
            .or_else(|| self.tunnels.len().checked_sub(1))?;
        self.tunnels.get_mut(pos)
    }

    /// Marks the tunnel of `epoch` confirmed; returns true the first time.
    pub fn confirm(&mut self, epoch: u64) -> bool {
        match self.tunnels.iter_mut().find(|t| t.epoch == epoch) {
            Some(t) if !t.confirmed => {
                t.confirmed = true;
                true
            }
            _ => false,
        }
    }

    /// The newest confirmed epoch.
    pub fn confirmed_epoch(&self) -> Option<u64> {
        self.tunnels
            .iter()
            .rev()
            .find(|t| t.confirmed)
            .map(|t| t.epoch)
    }

    /// The tunnel of `epoch`.
    pub fn by_epoch(&mut self, epoch: u64) -> Option<&mut EpochTunnel> {
        self.tunnels.iter_mut().find(|t| t.epoch == epoch)
    }

    /// All tunnels, for timer ticks.
    pub fn tunnels_mut(&mut self) -> impl Iterator<Item = &mut EpochTunnel> {
        self.tunnels.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::TunnResult;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn index_names_slot_and_epoch() {
        for slot in [0, 1, 77, MAX_SLOT] {
            for epoch in [1u64, 2, 15, 16, 17] {
                let idx = tunnel_index(slot, epoch);
                assert!(idx < 1 << 24);
                assert_eq!(slot_of_receiver(idx << 8 | 0xab), slot);
            }
        }
        assert_ne!(tunnel_index(3, 1), tunnel_index(3, 2));
    }

    fn pump(a: &mut Tunn, b: &mut Tunn, first: Vec<u8>) -> Vec<Vec<u8>> {
        // Delivers `first` to b, then ping-pongs replies until quiet; returns
        // packets written to b's tunnel side.
        let mut delivered = Vec::new();
        let mut to_b = vec![first];
        let mut to_a: Vec<Vec<u8>> = Vec::new();
        let mut buf = vec![0u8; crate::DATAGRAM_BUFFER];
        for _ in 0..10 {
            for p in std::mem::take(&mut to_b) {
                let mut input = p;
                loop {
                    match b.decapsulate(None, &input, &mut buf) {
                        TunnResult::WriteToNetwork(out) => {
                            to_a.push(out.to_vec());
                            input = Vec::new();
                        }
                        TunnResult::WriteToTunnelV4(out, _) => {
                            delivered.push(out.to_vec());
                            break;
                        }
                        _ => break,
                    }
                }
            }
            for p in std::mem::take(&mut to_a) {
                let mut input = p;
                while let TunnResult::WriteToNetwork(out) = a.decapsulate(None, &input, &mut buf) {
                    to_b.push(out.to_vec());
                    input = Vec::new();
                }
            }
        }
        delivered
    }

    #[test]
    fn same_epoch_talks_and_different_epochs_do_not() {
        let mut rng = StdRng::seed_from_u64(11);
        let hub = StaticKey::generate(&mut rng);
        let spoke = StaticKey::generate(&mut rng);
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let e2 = KeyEpoch::issue(2, 0, &mut rng);

        let mut hub_link = Link::new(5, spoke.public(), 0);
        assert!(hub_link.is_empty() && hub_link.is_idle());
        hub_link.install(&hub, &e1, None);
        assert!(!hub_link.is_empty() && hub_link.is_idle());
        let mut spoke_link = Link::new(0, hub.public(), 0);
        spoke_link.install(&spoke, &e1, None);

        let packet = {
            let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).udp(1, 2);
            let mut out = Vec::new();
            b.write(&mut out, b"x").unwrap();
            out
        };
        let mut buf = vec![0u8; crate::DATAGRAM_BUFFER];
        let init = match spoke_link
            .for_sending()
            .unwrap()
            .tunn
            .encapsulate(&packet, &mut buf)
        {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("expected a handshake"),
        };
        let got = pump(
            &mut spoke_link.for_sending().unwrap().tunn,
            &mut hub_link.newest().unwrap().tunn,
            init,
        );
        assert_eq!(got, vec![packet.clone()]);
        assert!(hub_link.for_sending().unwrap().has_session());
        assert!(!hub_link.is_idle());

        // A spoke on epoch 2 cannot complete a handshake with a hub on epoch 1.
        let mut wrong = Link::new(0, hub.public(), 0);
        wrong.install(&spoke, &e2, None);
        let init = match wrong.newest().unwrap().tunn.encapsulate(&packet, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("expected a handshake"),
        };
        let mut fresh_hub = Link::new(5, spoke.public(), 0);
        fresh_hub.install(&hub, &e1, None);
        let got = pump(
            &mut wrong.newest().unwrap().tunn,
            &mut fresh_hub.newest().unwrap().tunn,
            init,
        );
        assert!(got.is_empty());
        assert!(!wrong.newest().unwrap().has_session());
    }

    /// A hub's and a spoke's link on one fresh epoch, no session yet.
    fn pair(seed: u64) -> (StaticKey, StaticKey, KeyEpoch, Link, Link) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (hub, spoke) = (StaticKey::generate(&mut rng), StaticKey::generate(&mut rng));
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let mut hub_link = Link::new(5, spoke.public(), 0);
        hub_link.install(&hub, &e1, None);
        let mut spoke_link = Link::new(0, hub.public(), 0);
        spoke_link.install(&spoke, &e1, None);
        (hub, spoke, e1, hub_link, spoke_link)
    }

    /// Packets sealed before a session exists wait in the tunnel (one
    /// initiation goes out), up to [`MAX_WAITING`]; past that they are
    /// refused with a reason, and dropping the tunnel reports the rest.
    /// Once the handshake completes they are released, and none waits.
    #[test]
    fn packets_wait_for_the_session_and_are_counted_when_lost() {
        let (hub, spoke, e1, mut hub_link, mut spoke_link) = pair(13);
        let mut buf = vec![0u8; crate::DATAGRAM_BUFFER];
        let mut out = Outbox::new();
        let packet = [0x45u8; 60];
        let tunnel = spoke_link.for_sending().unwrap();
        assert!(matches!(
            tunnel.seal(&packet, &mut out, 1u8),
            Ok(Sealed::Waiting(Some(148)))
        ));
        let sent: Vec<Vec<u8>> = out
            .batches()
            .flat_map(|b| b.datagrams())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(sent.len(), 1, "one initiation");
        let init = sent[0].clone();
        out.clear();
        for _ in 1..MAX_WAITING {
            assert_eq!(tunnel.seal(&packet, &mut out, 1), Ok(Sealed::Waiting(None)));
        }
        assert!(
            out.is_empty(),
            "no second initiation while one is under way"
        );
        assert_eq!(tunnel.waiting(), MAX_WAITING);
        assert_eq!(
            tunnel.seal(&packet, &mut out, 1),
            Err(DropReason::HandshakeTimeout)
        );
        let too_big = vec![0x45u8; out.spare().len()];
        assert_eq!(
            tunnel.seal(&too_big, &mut out, 1),
            Err(DropReason::Unsupported)
        );
        // The hub answers; the spoke opens the answer and releases what waited.
        let hub_tunnel = hub_link.newest().unwrap();
        let response = match hub_tunnel.tunn.decapsulate(None, &init, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("expected a handshake response"),
        };
        assert!(matches!(
            tunnel.tunn.decapsulate(None, &response, &mut buf),
            TunnResult::WriteToNetwork(_)
        ));
        let mut released = 0;
        while let Some(len) = tunnel.release_waiting(&mut buf) {
            assert!(len > packet.len());
            released += 1;
        }
        assert_eq!(released, MAX_WAITING);
        assert_eq!(tunnel.waiting(), 0);
        // 60 bytes padded to 64, plus WireGuard's 32.
        assert_eq!(tunnel.seal(&packet, &mut out, 1), Ok(Sealed::Sent(96)));
        assert_eq!(tunnel.tick(&mut buf), Tick::Idle);
        // A tunnel dropped with packets waiting in it reports them.
        let mut fresh = Link::new(0, hub.public(), 0);
        fresh.install(&spoke, &e1, None);
        for _ in 0..3 {
            assert!(fresh
                .for_sending()
                .unwrap()
                .seal(&packet, &mut out, 1)
                .is_ok());
        }
        assert_eq!(fresh.retain(|_| false), 3);
    }

    #[test]
    fn padding_rounds_to_sixteen_within_the_mtu() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 16);
        assert_eq!(padded_len(16), 16);
        assert_eq!(padded_len(84), 96);
        let mtu = usize::from(crate::TUNNEL_MTU);
        assert_eq!(padded_len(mtu - 3), mtu, "never beyond the MTU");
        assert_eq!(padded_len(mtu + 5), mtu + 5, "an oversized packet as it is");
    }

    /// Every sealed data message carries a multiple of 16 bytes of inner
    /// packet, and the receiver gets the packet back at its own length.
    #[test]
    fn sealed_packets_are_padded_and_open_at_their_length() {
        let (_, _, _, mut hub_link, mut spoke_link) = pair(14);
        let mut buf = vec![0u8; crate::DATAGRAM_BUFFER];
        let mut out = Outbox::new();
        let packet_of = |payload: usize| {
            let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).udp(1, 2);
            let mut p = Vec::new();
            b.write(&mut p, &vec![7u8; payload]).unwrap();
            p
        };
        let tunnel = spoke_link.for_sending().unwrap();
        assert!(tunnel.seal(&packet_of(1), &mut out, 1u8).is_ok());
        let init: Vec<u8> = out
            .batches()
            .flat_map(|b| b.datagrams())
            .next()
            .unwrap()
            .to_vec();
        out.clear();
        let hub_tunnel = hub_link.newest().unwrap();
        let response = match hub_tunnel.tunn.decapsulate(None, &init, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("expected a handshake response"),
        };
        tunnel.tunn.decapsulate(None, &response, &mut buf);
        while tunnel.release_waiting(&mut buf).is_some() {}
        for payload in [0usize, 1, 3, 4, 17, 100, 1000, 1363, 1364, 1392] {
            let packet = packet_of(payload);
            let Ok(Sealed::Sent(len)) = tunnel.seal(&packet, &mut out, 1) else {
                panic!("not sent");
            };
            assert_eq!(len - 32, padded_len(packet.len()), "{} bytes", packet.len());
            if packet.len() + 16 <= usize::from(crate::TUNNEL_MTU) {
                assert_eq!((len - 32) % PADDING, 0, "{} bytes", packet.len());
            }
            let datagram: Vec<u8> = out
                .batches()
                .flat_map(|b| b.datagrams())
                .last()
                .unwrap()
                .to_vec();
            match hub_tunnel.tunn.decapsulate(None, &datagram, &mut buf) {
                TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p, &packet[..]),
                _ => panic!("did not open"),
            }
            out.clear();
        }
    }

    #[test]
    fn install_is_idempotent_and_retain_drops() {
        let mut rng = StdRng::seed_from_u64(12);
        let own = StaticKey::generate(&mut rng);
        let mut link = Link::new(1, PublicKey([7; 32]), 25);
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let e2 = KeyEpoch::issue(2, 0, &mut rng);
        link.install(&own, &e2, None);
        link.install(&own, &e1, None);
        link.install(&own, &e1, None);
        assert_eq!(link.epochs(), vec![1, 2]);
        assert_eq!(link.newest().unwrap().epoch, 2);
        let idx = tunnel_index(1, 1) << 8 | 3;
        assert_eq!(link.by_receiver(idx).unwrap().epoch, 1);
        assert!(link.confirm(1));
        assert!(!link.confirm(1));
        assert_eq!(
            link.for_sending().unwrap().epoch,
            1,
            "confirmed beats newer"
        );
        assert!(link.confirm(2));
        assert_eq!(link.for_sending().unwrap().epoch, 2);
        assert_eq!(link.confirmed_epoch(), Some(2));
        // Epoch 17 shares epoch 1's index: it replaces it.
        let e17 = KeyEpoch::issue(17, 0, &mut rng);
        link.install(&own, &e17, None);
        assert_eq!(link.epochs(), vec![2, 17]);
        assert_eq!(link.by_receiver(idx).unwrap().epoch, 17);
        link.retain(|e| e != 17);
        assert_eq!(link.epochs(), vec![2]);
        assert!(link.by_receiver(idx).is_none());
    }
}
