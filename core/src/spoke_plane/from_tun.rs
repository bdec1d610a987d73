//! What the spoke's data plane does with a packet read from its TUN:
//! IPv4 to a peer on a direct path goes straight to it, group multicast to
//! the group's members, IPv6 to a peer by its IPv4 twin's path, the rest
//! to the hub; link-scoped IPv6 stays here.

use std::net::Ipv4Addr;

use super::direct::Route;
use super::{SpokeEvent, SpokePlane};
use crate::datagram::TunSink;
use crate::link::Sealed;
use crate::multicast::multicast_destination;
use crate::routing::DropReason;

impl<T: TunSink> SpokePlane<T> {
    /// One packet read from the TUN: sealed to the hub.
    pub(super) fn on_tun(&mut self, packet: &[u8]) {
        let version = packet.first().map(|b| b >> 4);
        if version != Some(4) && version != Some(6) {
            self.count_drop(DropReason::Unsupported);
            return;
        }
        if self.blocked {
            self.count_drop(DropReason::KeyExpired);
            return;
        }
        if !self.carrying {
            self.count_drop(DropReason::NotLoggedIn);
            return;
        }
        if version == Some(6) {
            return self.on_tun6(packet);
        }
        if let Some(dst) = multicast_destination(packet) {
            self.send_multicast(packet, dst);
            return;
        }
        if let Some(dst) = packet.get(16..20) {
            let dst = Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]);
            if self.sent_direct(dst, packet) {
                return;
            }
        }
        if self.seal_to_hub(packet) {
            self.counters.from_tun += 1;
        }
    }

    /// An IPv6 packet read from the TUN: through the hub (direct mode and
    /// group multicast carry IPv4), unless it belongs to the link.
    fn on_tun6(&mut self, packet: &[u8]) {
        let header = match crate::routing::inner_header(packet) {
            Ok(h) => h,
            Err(reason) => return self.count_drop(reason),
        };
        let (std::net::IpAddr::V6(src), std::net::IpAddr::V6(dst)) = (header.src, header.dst)
        else {
            return self.count_drop(DropReason::Malformed);
        };
        if crate::routing::is_link_scoped(src, dst) {
            return self.count_drop(DropReason::Ipv6LinkLocal);
        }
        if self.own6.is_none() || dst.is_multicast() {
            return self.count_drop(DropReason::Unsupported);
        }
        // To a peer spoke: its path, as its IPv4 traffic's.
        if let Some(peer) = self.direct.peer_v4_of(dst) {
            if self.sent_direct(peer, packet) {
                return;
            }
        }
        if self.seal_to_hub(packet) {
            self.counters.from_tun += 1;
        }
    }

    /// Sends `packet` for the peer at `dst` straight to it when its path is
    /// direct; false when it goes through the hub (asking for the pair
    /// when that is due).
    fn sent_direct(&mut self, dst: Ipv4Addr, packet: &[u8]) -> bool {
        match self.direct.route(dst, self.now_ms) {
            Route::Direct(peer) => {
                match self
                    .direct
                    .seal(peer, packet, &mut self.io.out, self.now_ms)
                {
                    Ok(Sealed::Sent(_)) => self.counters.from_tun += 1,
                    Ok(Sealed::Waiting(_)) => self.counters.queued += 1,
                    Err(reason) => self.count_drop(reason),
                }
                true
            }
            Route::Relay(Some(ask)) => {
                self.io.events.push_back(SpokeEvent::AskPair(ask));
                false
            }
            Route::Relay(None) => {
                self.direct.observe_relayed(packet, self.now_ms);
                false
            }
        }
    }
}
