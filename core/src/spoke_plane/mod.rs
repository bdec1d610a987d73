//! The spoke's data plane as a state machine with no I/O: one WireGuard
//! tunnel per key epoch of the spoke–hub link. Which epoch to run, when to
//! move on and when to stop is decided by [`SpokeKeys`]; this counts the
//! link's use, seals and opens, and says what the shell must store and
//! report. The shell feeds it datagrams, TUN packets and the time, and
//! writes out its outbox and TUN sink.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::admin_api::Counters;
use crate::datagram::{open_datagram, DataPlane, Opened, PassIo, TunSink};
use crate::keys::{PublicKey, StaticKey};
use crate::link::{Link, Tick};
use crate::multicast::{multicast_destination, Membership};
use crate::routing::DropReason;
use crate::spoke_keys::{HeldEpoch, SpokeKeys};
use crate::spoke_pairs::PairCommand;

mod direct;
mod from_tun;
mod multicast;
mod peer;
use direct::{DirectPeers, FromPeer};

/// What the spoke's data plane asks of the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpokeEvent {
    /// This epoch carries traffic now: store it as current, then send the
    /// hub the update report (never before it is stored).
    StoreCurrent(u64),
    /// Erase every stored epoch below this one.
    EraseBelow(u64),
    /// The current epoch is over and we may not move on alone: send the
    /// hub an update request.
    RequestUpdate,
    /// A hard limit stopped traffic: send the hub a distribution request.
    NeedKeys,
    /// Traffic for the spoke at this tunnel address goes through the
    /// relay: ask the hub for the pair (direct mode).
    AskPair(Ipv4Addr),
}

/// The spoke's data-plane status.
#[derive(Clone, Debug, Default)]
pub struct SpokeStatus {
    /// Its counters.
    pub counters: Counters,
    /// The epoch carrying traffic.
    pub epoch: Option<u64>,
    /// Every epoch held.
    pub held: Vec<u64>,
    /// Stopped by a hard limit.
    pub blocked: bool,
    /// Seconds since the last WireGuard handshake.
    pub last_handshake_secs: Option<u64>,
    /// Peer spokes in direct mode.
    pub peers: Vec<crate::admin_api::PeerView>,
    /// The IPv6 tunnel address it carries, if any.
    pub own6: Option<std::net::Ipv6Addr>,
}

/// The spoke's data plane. `T` is where opened packets wait for the TUN.
pub struct SpokePlane<T: TunSink> {
    key: Arc<StaticKey>,
    hub: SocketAddr,
    keys: SpokeKeys,
    link: Link,
    counters: Counters,
    /// Authenticated datagrams in and data messages out, for the epoch's
    /// packet budget.
    packets: u64,
    /// Their bytes, for the epoch's byte budget.
    bytes: u64,
    /// The epoch whose handshake was last started by a switch.
    switching: Option<u64>,
    blocked: bool,
    /// The hub carries our traffic only while a user is logged in (or for a
    /// service spoke); until then packets are dropped here, where the user
    /// can see why.
    carrying: bool,
    /// Seconds on a clock that only moves forward (the boot clock), set by
    /// the driver before each pass.
    now: u64,
    /// The same clock in milliseconds, for the direct paths.
    now_ms: u64,
    /// Peer spokes reached directly (direct mode).
    direct: DirectPeers,
    /// Datagrams, TUN packets and events the pass leaves for the driver.
    io: PassIo<T, SpokeEvent>,
    /// The keyed groups whose multicast we send and receive.
    multicast: Membership,
    /// An envelope being sealed or opened (reused).
    multicast_buf: Vec<u8>,
    /// This spoke's IPv6 tunnel address, where IPv6 is carried.
    own6: Option<std::net::Ipv6Addr>,
}

impl<T: TunSink + Default> SpokePlane<T> {
    /// A data plane for the link to `hub` (key `hub_key`), with the epochs
    /// the store holds and the one that last carried traffic, at `now`.
    pub fn new(
        key: Arc<StaticKey>,
        hub_key: PublicKey,
        hub: SocketAddr,
        keepalive_secs: u16,
        (held, current): (Vec<HeldEpoch>, u64),
        now: u64,
    ) -> Self {
        let mut link = Link::new(0, hub_key, keepalive_secs);
        for h in &held {
            link.install(&key, &h.epoch, None);
        }
        Self {
            keys: SpokeKeys::new(held, current, now),
            direct: DirectPeers::new(&key, keepalive_secs),
            now_ms: now.saturating_mul(1000),
            key,
            hub,
            link,
            counters: Counters::default(),
            packets: 0,
            bytes: 0,
            switching: None,
            blocked: false,
            carrying: true,
            now,
            io: PassIo::default(),
            multicast: Membership::new(),
            multicast_buf: Vec::new(),
            own6: None,
        }
    }
}

impl<T: TunSink> SpokePlane<T> {
    /// Sets the time the next calls see (seconds on the boot clock).
    pub fn set_now(&mut self, now: u64) {
        self.set_now_ms(now.saturating_mul(1000));
    }

    /// Sets the time the next calls see (milliseconds on the boot clock).
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.now = now_ms / 1000;
    }
}

impl<T: TunSink> DataPlane for SpokePlane<T> {
    type Sink = T;
    type Event = SpokeEvent;

    /// Datagrams from the hub's address are the hub link's; any other
    /// address is a peer spoke's (direct mode).
    fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        if from == self.hub {
            self.on_datagram(datagram);
        } else {
            self.on_peer_datagram(from, datagram);
        }
    }

    fn handle_tun(&mut self, packet: &[u8]) {
        self.on_tun(packet);
    }

    fn io(&mut self) -> &mut PassIo<T, SpokeEvent> {
        &mut self.io
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }

    fn lost(&mut self, reason: DropReason, count: u64) {
        self.count_lost(reason, count);
    }
}

impl<T: TunSink> SpokePlane<T> {
    /// A delivered epoch, stored and acknowledged: its tunnel is built.
    pub fn hold(&mut self, h: HeldEpoch) {
        self.link.install(&self.key, &h.epoch, None);
        self.keys.hold(h);
        self.poll_keys();
    }

    /// The hub's update notification: switch to epoch `k` now.
    pub fn switch_to(&mut self, k: u64) {
        self.keys.request_switch(k);
        self.poll_keys();
    }

    /// Starts a fresh handshake now (the hub may have restarted).
    pub fn rehandshake(&mut self) {
        let k = self.switching.unwrap_or(self.keys.current());
        self.handshake(k);
    }

    /// Whether the hub carries our traffic (a user is logged in).
    pub fn set_carrying(&mut self, carrying: bool) {
        self.carrying = carrying;
    }

    /// Where we are in the tunnel network (from the hub's configuration):
    /// destinations there are peer spokes, which direct mode may reach.
    pub fn set_network(&mut self, own: Ipv4Addr, net: ipnet::Ipv4Net, hub: Ipv4Addr) {
        self.direct.set_network(own, net, hub);
        self.multicast.set_own(own);
    }

    /// Carries IPv6 from (and to) tunnel address `own6`, or none.
    pub fn set_ipv6(&mut self, own6: Option<std::net::Ipv6Addr>) {
        self.own6 = own6;
        self.direct.set_ipv6(own6);
    }

    /// A pair's command from the spoke's pairs ([`crate::spoke_pairs`]).
    pub fn pair_command(&mut self, cmd: PairCommand) {
        let lost = match cmd {
            PairCommand::Hold { pair, peer, epoch } => {
                self.direct.hold(&self.key, pair, &peer, &epoch);
                0
            }
            PairCommand::Use {
                pair,
                epoch,
                candidates,
            } => {
                self.direct
                    .use_epoch(pair, epoch, candidates, self.now_ms, &mut self.io.out);
                0
            }
            PairCommand::Erase { pair, epoch } => self.direct.erase(pair, epoch),
            PairCommand::Rules { pair, rules } => {
                self.direct.set_rules(pair, &rules);
                0
            }
            PairCommand::End(pair) => self.direct.end(pair),
        };
        self.count_lost(DropReason::HandshakeTimeout, lost.into());
    }

    /// Every pair's path and counters, and which carried direct traffic
    /// since the last call (for the hub, which cannot see it).
    pub fn take_pair_usage(&mut self) -> Vec<crate::control::PairUsage> {
        self.direct.take_usage()
    }

    /// The hub revoked this spoke: every tunnel and key goes.
    pub fn revoke(&mut self) {
        self.direct.clear();
        self.link.retain(|_| false);
        self.keys = SpokeKeys::default();
        self.switching = None;
    }

    /// The hub's address, where datagrams go.
    pub fn hub(&self) -> SocketAddr {
        self.hub
    }

    /// The hub moved: datagrams go to `addr` from now on (the driver's
    /// socket already sends there).
    pub fn move_hub(&mut self, addr: SocketAddr) {
        if self.hub == addr {
            return;
        }
        self.hub = addr;
        // Another member of a hub cluster has no session with us (one that
        // only moved keeps the old one until the new is up).
        self.rehandshake();
    }

    /// This machine's underlay addresses changed (a new network, a
    /// renumbered interface): a keepalive to the hub and to every peer on a
    /// direct path, so they learn our new address now rather than at our
    /// next packet; the hub's is a handshake when the session is gone.
    pub fn underlay_changed(&mut self) {
        let sent = self.link.for_sending().and_then(|t| {
            match t.tunn.encapsulate(&[], self.io.out.spare()) {
                TunnResult::WriteToNetwork(d) => Some(d.len()),
                _ => None,
            }
        });
        if !sent.is_some_and(|len| self.io.out.commit(self.hub, len)) {
            self.rehandshake();
        }
        self.direct.nudge(&mut self.io.out);
    }

    /// The first handshake, at start: the hub learns where we are.
    pub fn start(&mut self) {
        let first = self.keys.current();
        let first = if first > 0 {
            first
        } else {
            self.link.epochs().last().copied().unwrap_or(0)
        };
        self.handshake(first);
    }

    /// Counters, epochs and the last handshake, for status.
    pub fn status(&mut self) -> SpokeStatus {
        let last = self
            .link
            .for_sending()
            .and_then(|t| t.tunn.time_since_last_handshake())
            .map(|d| d.as_secs());
        let current = self.keys.current();
        SpokeStatus {
            counters: self.counters.clone(),
            epoch: (current > 0).then_some(current),
            held: self.keys.held(),
            blocked: self.blocked,
            last_handshake_secs: last,
            peers: self.direct.views(),
            own6: self.own6,
        }
    }

    fn count_drop(&mut self, reason: DropReason) {
        self.count_lost(reason, 1);
    }

    fn count_lost(&mut self, reason: DropReason, count: u64) {
        if count > 0 {
            *self
                .counters
                .dropped
                .entry(reason.name().to_owned())
                .or_default() += count;
        }
    }

    /// Starts a handshake under epoch `k` (if its tunnel exists).
    fn handshake(&mut self, k: u64) {
        let Some(tunnel) = self.link.by_epoch(k) else {
            return;
        };
        if let TunnResult::WriteToNetwork(p) = tunnel
            .tunn
            .format_handshake_initiation(self.io.out.spare(), true)
        {
            let len = p.len();
            self.io.out.commit(self.hub, len);
        }
    }

    /// Asks the key state what to do, and does it.
    fn poll_keys(&mut self) {
        let poll = self.keys.poll(self.now, self.packets, self.bytes);
        if poll.blocked != self.blocked {
            self.blocked = poll.blocked;
            if poll.blocked {
                self.io.events.push_back(SpokeEvent::NeedKeys);
                tracing::warn!(
                    epoch = self.keys.current(),
                    "key epoch over its hard limit and no next epoch held: traffic stopped until the hub sends a new key"
                );
            } else {
                tracing::info!("traffic resumed");
            }
        }
        if poll.request_update {
            tracing::info!(
                epoch = self.keys.current(),
                "key epoch over: asking the hub for an update"
            );
            self.io.events.push_back(SpokeEvent::RequestUpdate);
        }
        if let Some(k) = poll.switch_to {
            if self.switching != Some(k) && k != self.keys.current() {
                self.switching = Some(k);
                tracing::info!(from = self.keys.current(), to = k, "switching key epoch");
                self.handshake(k);
            }
        }
    }

    /// One datagram from the hub: a handshake answer, a cookie, data.
    fn on_datagram(&mut self, datagram: &[u8]) {
        self.counters.rx_datagrams += 1;
        let tunnel = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(_)) => {
                let k = self.keys.current();
                if k > 0 {
                    self.link.by_epoch(k)
                } else {
                    self.link.newest()
                }
            }
            Ok(Packet::HandshakeResponse(p)) => self.link.by_receiver(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.link.by_receiver(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.link.by_receiver(p.receiver_idx),
            Err(_) => None,
        };
        let Some(tunnel) = tunnel else {
            self.count_drop(DropReason::BadDatagram);
            return;
        };
        let epoch = tunnel.epoch;
        let kind = datagram.first().copied();
        let inner = match open_datagram(
            tunnel,
            None,
            self.hub,
            datagram,
            &mut self.io.out,
            &mut self.io.to_tun,
        ) {
            Opened::Inner(len) => Some(len),
            Opened::Nothing => None,
            Opened::Rejected(e) => {
                // Expected during a switch: the hub answers an initiation under
                // every epoch we may be on, and only one answer opens.
                tracing::debug!(error = ?e, epoch, kind, "datagram rejected");
                self.count_drop(DropReason::BadDatagram);
                return;
            }
        };
        // Usage, as the hub counts it: authenticated datagrams received
        // and data messages sealed.
        self.packets += 1;
        self.bytes += datagram.len() as u64;
        // An answered handshake or a decrypted data packet: the hub runs this epoch.
        if matches!(kind, Some(2) | Some(4)) && self.link.confirm(epoch) {
            if kind == Some(2) {
                self.counters.handshakes += 1;
            }
            self.on_confirmed(epoch);
        }
        if let Some(len) = inner {
            if self.blocked {
                self.count_drop(DropReason::KeyExpired);
                return;
            }
            if multicast_destination(self.io.to_tun.pending(len)).is_some() {
                self.deliver_multicast(len);
                return;
            }
            if self.direct.has_peers() {
                self.direct
                    .observe_relayed(self.io.to_tun.pending(len), self.now_ms);
            }
            self.io.to_tun.commit(len);
            self.counters.to_tun += 1;
        }
    }

    fn on_confirmed(&mut self, epoch: u64) {
        if !self
            .keys
            .on_confirmed(epoch, self.now, self.packets, self.bytes)
        {
            return;
        }
        if self.switching.is_some_and(|s| s <= epoch) {
            self.switching = None;
        }
        self.blocked = false;
        tracing::info!(epoch, "key epoch carries traffic");
        // Stored first, then reported to the hub (by the driver's writer).
        self.io.events.push_back(SpokeEvent::StoreCurrent(epoch));
    }

    /// Erases the ended epochs whose grace has passed (tunnels, keys, then
    /// the store, off this thread).
    fn erase_due(&mut self) {
        let Some(below) = self.keys.take_erasable(self.now) else {
            return;
        };
        let lost = self.link.retain(|e| e >= below);
        self.count_lost(DropReason::HandshakeTimeout, lost.into());
        self.io.events.push_back(SpokeEvent::EraseBelow(below));
    }

    /// WireGuard's timers, erasure and the key state (every 250 ms).
    pub fn handle_timeout(&mut self) {
        self.erase_due();
        self.poll_keys();
        let mut lost = 0;
        for tunnel in self.link.tunnels_mut() {
            match tunnel.tick(self.io.out.spare()) {
                Tick::Send(len) => {
                    self.io.out.commit(self.hub, len);
                }
                Tick::Lost(n) => lost += n,
                Tick::Idle => {}
            }
        }
        lost += self.direct.tick(self.now_ms, &mut self.io.out);
        self.count_lost(DropReason::HandshakeTimeout, lost.into());
    }

    /// A datagram from a peer spoke (direct mode).
    fn on_peer_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.counters.rx_datagrams += 1;
        match self.direct.open(
            &self.key,
            from,
            datagram,
            &mut self.io.out,
            &mut self.io.to_tun,
            self.now_ms,
        ) {
            FromPeer::Inner(len) => {
                if self.blocked {
                    self.count_drop(DropReason::KeyExpired);
                } else if !self.carrying {
                    self.count_drop(DropReason::NotLoggedIn);
                } else if multicast_destination(self.io.to_tun.pending(len)).is_some() {
                    self.deliver_multicast(len);
                } else {
                    self.io.to_tun.commit(len);
                    self.counters.to_tun += 1;
                }
            }
            FromPeer::Nothing => {}
            FromPeer::Drop(reason) => self.count_drop(reason),
        }
    }
}
