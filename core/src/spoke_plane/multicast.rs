//! Group multicast in the spoke's data plane: a packet the TUN sends into
//! a keyed group's range is sealed under the group's epoch and sent
//! straight to the members on a direct path and once to the hub for the
//! others; an envelope that comes in (either way) is opened, checked and
//! written to the TUN once ([`Membership`]).

use std::net::Ipv4Addr;

use super::SpokePlane;
use crate::datagram::TunSink;
use crate::link::Sealed;
use crate::multicast::{is_igmp, MemberGroup, Membership};
use crate::routing::DropReason;
use crate::TUNNEL_MTU;

impl<T: TunSink> SpokePlane<T> {
    /// What makes this run's multicast nonces its own (a random `boot`,
    /// and the wall clock's microseconds for the first counter). Nothing
    /// is sent into a group before.
    pub fn seed_multicast(&mut self, boot: [u8; 12], first_counter: u64) {
        self.multicast.seed(boot, first_counter);
    }

    /// Holds a group's multicast: its ranges, members online, epochs'
    /// multicast keys and the epoch in use.
    pub fn set_multicast(&mut self, group: MemberGroup) {
        self.multicast.set(group);
    }

    /// Forgets a group's multicast (no member any more).
    pub fn remove_multicast(&mut self, group: &str) {
        self.multicast.remove(group);
    }

    /// The groups held (for tests and status).
    pub fn multicast(&self) -> &Membership {
        &self.multicast
    }

    /// A packet from the TUN to the multicast address `dst`.
    pub(super) fn send_multicast(&mut self, packet: &[u8], dst: Ipv4Addr) {
        if is_igmp(packet) {
            self.count_drop(DropReason::Igmp);
            return;
        }
        let mut buf = std::mem::take(&mut self.multicast_buf);
        buf.resize(usize::from(TUNNEL_MTU), 0);
        let direct = &mut self.direct;
        let ready: Vec<Ipv4Addr> = self
            .multicast
            .members_of(dst)
            .into_iter()
            .filter(|m| direct.direct_to(*m).is_some())
            .collect();
        let sealed =
            self.multicast
                .seal(packet, dst, self.now_ms, |m| ready.contains(&m), &mut buf);
        match sealed {
            Err(reason) => self.count_drop(reason),
            Ok(mut out) => {
                for (i, member) in out.direct.iter().enumerate() {
                    let envelope = &buf[..out.len];
                    let sent = match self.direct.direct_to(*member) {
                        Some(id) => self
                            .direct
                            .seal(id, envelope, &mut self.io.out, self.now_ms),
                        None => Err(DropReason::NoSession),
                    };
                    if let Err(reason) = sent {
                        // Not reached straight: the hub's copy covers it.
                        tracing::debug!(%member, ?reason, "group multicast not sent direct");
                        unskip(&mut buf, i);
                        out.via_hub = true;
                    } else {
                        self.counters.multicast += 1;
                    }
                }
                if out.via_hub {
                    self.seal_to_hub(&buf[..out.len]);
                }
                self.counters.from_tun += 1;
            }
        }
        self.multicast_buf = buf;
    }

    /// The envelope of `len` bytes just opened into the TUN slot: opened
    /// in its place, written to the TUN if it is a member's.
    pub(super) fn deliver_multicast(&mut self, len: usize) {
        let mut envelope = std::mem::take(&mut self.multicast_buf);
        envelope.clear();
        envelope.extend_from_slice(self.io.to_tun.pending(len));
        let slot = self.io.to_tun.slot(envelope.len());
        match self.multicast.open(&envelope, slot) {
            Ok(n) => {
                self.io.to_tun.commit(n);
                self.counters.to_tun += 1;
                self.counters.multicast += 1;
            }
            Err(reason) => self.count_drop(reason),
        }
        self.multicast_buf = envelope;
    }

    /// Seals `packet` to the hub over the link (counted as sent from the
    /// TUN by the caller when it is a multicast copy).
    pub(super) fn seal_to_hub(&mut self, packet: &[u8]) -> bool {
        let Some(tunnel) = self.link.for_sending() else {
            self.count_drop(DropReason::NoSession);
            return false;
        };
        match tunnel.seal(packet, &mut self.io.out, self.hub) {
            Ok(Sealed::Sent(len)) => {
                self.packets += 1;
                self.bytes += len as u64;
                true
            }
            Ok(Sealed::Waiting(_)) => {
                self.counters.queued += 1;
                false
            }
            Err(reason) => {
                self.count_drop(reason);
                false
            }
        }
    }
}

/// Clears the `i`th member the sender listed as reached directly, so the
/// hub copies the envelope to it after all (the list is not sealed).
fn unskip(envelope: &mut [u8], i: usize) {
    let at = crate::multicast::SKIP_AT + 4 * i;
    if let Some(entry) = envelope.get_mut(at..at + 4) {
        entry.fill(0);
    }
}
