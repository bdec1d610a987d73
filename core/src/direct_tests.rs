//! Direct mode with the real data-plane machines and no I/O: two spokes
//! and the hub, the test carrying datagrams by address the way the
//! underlay would (with a switch to cut the spokes' direct path), and
//! playing both spokes' control sides (the pair epochs the hub would
//! deliver, the switch it would announce).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rand::{rngs::StdRng, SeedableRng};

use crate::access::{AccessPolicy, PairRule, PairRules};
use crate::control::{Lifetime, PairPeer};
use crate::datagram::{DataPlane, PacketBatch};
use crate::hub_plane::{HubPlane, LinkSpec};
use crate::keys::{KeyEpoch, StaticKey};
use crate::pair::PairId;
use crate::routing::RouteTable;
use crate::spoke_keys::HeldEpoch;
use crate::spoke_pairs::PairCommand;
use crate::spoke_plane::{SpokeEvent, SpokePlane};
use crate::test_packets::udp;

const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const HUB_AT: &str = "172.30.0.1:51820";
const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

struct Spoke {
    at: SocketAddr,
    key: Arc<StaticKey>,
    plane: SpokePlane<PacketBatch>,
}

struct World {
    hub: HubPlane<PacketBatch>,
    spokes: Vec<Spoke>,
    rng: StdRng,
    /// While false, datagrams between the spokes are lost.
    direct_open: bool,
    /// Datagrams that went spoke to spoke.
    direct_datagrams: u64,
    now_ms: u64,
    /// Each spoke's access rules for the pair (open by default).
    rules: [PairRules; 2],
}

impl World {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(7);
        let hub_key = Arc::new(StaticKey::generate(&mut rng));
        let net = "10.77.0.0/24".parse().unwrap();
        let routes = RouteTable::new(net, HUB, vec![]);
        let access = Arc::new(AccessPolicy::default().compile(HUB, &[]));
        let mut hub = HubPlane::<PacketBatch>::new(hub_key.clone(), routes, access);
        let mut spokes = Vec::new();
        for (n, addr) in [A, B].into_iter().enumerate() {
            let key = Arc::new(StaticKey::generate(&mut rng));
            let epoch = KeyEpoch::issue(1, 0, &mut rng);
            hub.upsert(LinkSpec {
                id: n as u32 + 1,
                public_key: key.public(),
                tunnel_addr: addr,
                tunnel_addr6: None,
                epochs: vec![epoch.clone()],
                handshake_epochs: vec![1],
                carry: true,
                confirmed: 0,
            });
            let held = HeldEpoch {
                epoch,
                lifetime: Lifetime::default(),
            };
            let mut plane = SpokePlane::<PacketBatch>::new(
                key.clone(),
                hub_key.public(),
                HUB_AT.parse().unwrap(),
                0,
                (vec![held], 0),
                100,
            );
            plane.set_network(addr, net, HUB);
            plane.start();
            let at = SocketAddr::from(([192, 0, 2, n as u8 + 2], 40_000));
            spokes.push(Spoke { at, key, plane });
        }
        let mut w = Self {
            hub,
            spokes,
            rng,
            direct_open: true,
            direct_datagrams: 0,
            now_ms: 100_000,
            rules: [PairRules::default(), PairRules::default()],
        };
        w.settle();
        w
    }

    /// Carries datagrams until nothing moves.
    fn settle(&mut self) {
        let hub_at: SocketAddr = HUB_AT.parse().unwrap();
        for _ in 0..40 {
            let mut moved = false;
            for i in 0..self.spokes.len() {
                let from = self.spokes[i].at;
                for (to, d) in self.spokes[i].plane.outbox().take_all() {
                    moved = true;
                    if to == hub_at {
                        self.hub.handle_datagram(from, &d);
                    } else if let Some(j) = self.spokes.iter().position(|s| s.at == to) {
                        if self.direct_open {
                            self.direct_datagrams += 1;
                            self.spokes[j].plane.handle_datagram(from, &d);
                        }
                    }
                }
            }
            for (to, d) in self.hub.outbox().take_all() {
                if let Some(s) = self.spokes.iter_mut().find(|s| s.at == to) {
                    s.plane.handle_datagram(hub_at, &d);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the machines never settled");
    }

    /// Moves both clocks on and runs the timers.
    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for s in &mut self.spokes {
            s.plane.set_now_ms(self.now_ms);
            s.plane.handle_timeout();
        }
        self.settle();
    }

    fn pair(&self) -> PairId {
        PairId::new(1, 2).unwrap()
    }

    fn peer_of(&self, i: usize) -> PairPeer {
        let j = 1 - i;
        PairPeer {
            spoke_id: j as u32 + 1,
            name: ["a", "b"][j].into(),
            public_key: self.spokes[j].key.public(),
            tunnel_addr: [A, B][j],
            candidates: vec![self.spokes[j].at],
        }
    }

    /// Both spokes hold pair epoch `number` and are told to use it.
    fn pair_epoch(&mut self, number: u64) {
        let epoch = KeyEpoch::issue(number, 0, &mut self.rng);
        let pair = self.pair();
        for i in 0..2 {
            let peer = self.peer_of(i);
            let candidates = peer.candidates.clone();
            let plane = &mut self.spokes[i].plane;
            plane.pair_command(PairCommand::Hold {
                pair,
                peer,
                epoch: epoch.clone(),
            });
            plane.pair_command(PairCommand::Rules {
                pair,
                rules: self.rules[i].clone(),
            });
            plane.pair_command(PairCommand::Use {
                pair,
                epoch: number,
                candidates,
            });
        }
        self.advance(0);
    }

    fn path_of(&mut self, i: usize) -> String {
        let peers = self.spokes[i].plane.status().peers;
        peers.first().map(|p| p.path.clone()).unwrap_or_default()
    }

    /// Sends `n` packets a → b, one per 10 ms; returns how many b got.
    fn stream(&mut self, n: usize) -> usize {
        let before = self.spokes[1].plane.to_tun().packets.len();
        for k in 0..n {
            let p = udp(A, B, format!("packet {k}").as_bytes());
            self.spokes[0].plane.handle_tun(&p);
            self.advance(10);
        }
        self.spokes[1].plane.to_tun().packets.len() - before
    }
}

fn relayed(w: &mut World) -> u64 {
    w.hub.status().counters.relayed
}

#[test]
fn traffic_goes_through_the_relay_asks_for_a_pair_and_then_goes_direct() {
    let mut w = World::new();
    let first = udp(A, B, b"first");
    w.spokes[0].plane.handle_tun(&first);
    w.settle();
    assert_eq!(w.spokes[1].plane.to_tun().packets, vec![first]);
    assert_eq!(relayed(&mut w), 1);
    let events: Vec<SpokeEvent> = std::iter::from_fn(|| w.spokes[0].plane.poll_event()).collect();
    assert!(events.contains(&SpokeEvent::AskPair(B)), "{events:?}");
    // Packets to the hub or outside the tunnel network ask for nothing.
    w.spokes[0].plane.handle_tun(&udp(A, HUB, b"hub"));
    w.settle();
    let events: Vec<SpokeEvent> = std::iter::from_fn(|| w.spokes[0].plane.poll_event()).collect();
    assert!(!events.iter().any(|e| matches!(e, SpokeEvent::AskPair(_))));

    w.pair_epoch(1);
    assert_eq!(w.path_of(0), "direct");
    assert_eq!(w.path_of(1), "direct");
    let relayed_before = relayed(&mut w);
    let direct_before = w.direct_datagrams;
    assert_eq!(w.stream(20), 20, "nothing lost");
    assert_eq!(relayed(&mut w), relayed_before, "the hub relays none of it");
    assert!(w.direct_datagrams >= direct_before + 20);
    let a = &w.spokes[0].plane.status().peers[0];
    assert_eq!(a.tx_packets, 20);
    assert_eq!(a.upgrades, 1);
}

#[test]
fn a_blocked_direct_path_falls_back_to_the_relay_and_comes_back() {
    let mut w = World::new();
    w.pair_epoch(1);
    assert_eq!(w.path_of(0), "direct");
    w.direct_open = false;
    // Packets sent into the blocked path are lost until the trust window
    // ends; then the relay carries them.
    w.stream(600);
    assert_eq!(w.path_of(0), "relay");
    let relayed_before = relayed(&mut w);
    assert_eq!(w.stream(10), 10, "the relay carries everything now");
    assert_eq!(relayed(&mut w), relayed_before + 10);
    // b heard a through the hub: it answers through the hub too.
    assert_eq!(w.path_of(1), "relay");
    assert_eq!(w.spokes[0].plane.status().peers[0].fallbacks, 1);
    // Open again: after the back-off, the probes find the path.
    w.direct_open = true;
    for _ in 0..100 {
        w.advance(100);
    }
    assert_eq!(w.path_of(0), "direct");
    let relayed_before = relayed(&mut w);
    assert_eq!(w.stream(10), 10);
    assert_eq!(relayed(&mut w), relayed_before);
}

#[test]
fn a_new_pair_epoch_takes_over_without_losing_a_packet() {
    let mut w = World::new();
    w.pair_epoch(1);
    assert_eq!(w.stream(10), 10);
    for k in 2..6 {
        w.pair_epoch(k);
        assert_eq!(w.stream(10), 10, "epoch {k}");
        assert_eq!(w.path_of(0), "direct");
    }
    let held = &w.spokes[0].plane.status().peers[0];
    assert_eq!(held.epoch, 5);
    // Every epoch took a handshake, each counted by the side that began
    // it: the reports feed the pair's handshake budget at the hub.
    let began: u64 = (0..2)
        .flat_map(|i| w.spokes[i].plane.take_pair_usage())
        .map(|u| u.handshakes)
        .sum();
    assert!(began >= 5, "{began} handshakes reported for 5 epochs");
}

#[test]
fn a_peer_cannot_send_from_another_address_or_to_someone_else() {
    let mut w = World::new();
    w.pair_epoch(1);
    let dropped = |w: &mut World, reason: &str| {
        w.spokes[1]
            .plane
            .status()
            .counters
            .dropped
            .get(reason)
            .copied()
            .unwrap_or(0)
    };
    let forged = udp(Ipv4Addr::new(10, 77, 0, 9), B, b"forged");
    w.spokes[0].plane.handle_tun(&udp(A, B, b"real"));
    w.settle();
    let got = w.spokes[1].plane.to_tun().packets.len();
    // a's session seals a packet whose source is not a's address: the
    // kernel would not, a compromised spoke might.
    let before = dropped(&mut w, "forged_source");
    let mut spoof = forged.clone();
    spoof[12..16].copy_from_slice(&[10, 77, 0, 9]);
    w.spokes[0].plane.handle_tun(&spoof);
    w.settle();
    assert_eq!(w.spokes[1].plane.to_tun().packets.len(), got);
    assert_eq!(dropped(&mut w, "forged_source"), before + 1);
    // Junk from an unknown address is dropped, not a panic.
    w.spokes[1]
        .plane
        .handle_datagram("198.51.100.1:9".parse().unwrap(), &[4, 0, 0, 0, 1, 2, 3]);
    w.spokes[1]
        .plane
        .handle_datagram("198.51.100.1:9".parse().unwrap(), &[1; 148]);
    assert!(dropped(&mut w, "bad_datagram") + dropped(&mut w, "unknown_peer") >= 2);
    // A flood of initiations from one address: most never reach the
    // cryptography.
    for _ in 0..200 {
        w.spokes[1]
            .plane
            .handle_datagram("198.51.100.2:9".parse().unwrap(), &[1; 148]);
    }
    assert!(dropped(&mut w, "rate_limited") > 150);
    // b still works.
    assert_eq!(w.stream(5), 5);
}

#[test]
fn an_ended_pair_sends_through_the_relay_again() {
    let mut w = World::new();
    w.pair_epoch(1);
    assert_eq!(w.path_of(0), "direct");
    let pair = w.pair();
    w.spokes[0].plane.pair_command(PairCommand::End(pair));
    w.spokes[1].plane.pair_command(PairCommand::End(pair));
    assert!(w.spokes[0].plane.status().peers.is_empty());
    let relayed_before = relayed(&mut w);
    assert_eq!(w.stream(5), 5);
    assert_eq!(relayed(&mut w), relayed_before + 5);
}

#[test]
fn one_way_traffic_and_a_last_reply_keep_the_direct_path() {
    let mut w = World::new();
    w.pair_epoch(1);
    // Only a sends, for longer than the trust window: b's keepalives answer.
    assert_eq!(w.stream(800), 800);
    assert_eq!(w.path_of(0), "direct");
    // b replies last, then nobody sends: a's keepalive answers b.
    w.spokes[1].plane.handle_tun(&udp(B, A, b"the last word"));
    for _ in 0..100 {
        w.advance(100);
    }
    assert_eq!(w.path_of(0), "direct");
    assert_eq!(w.path_of(1), "direct");
    for i in 0..2 {
        assert_eq!(
            w.spokes[i].plane.status().peers[0].fallbacks,
            0,
            "spoke {i}"
        );
    }
}

#[test]
fn the_receiver_enforces_the_pairs_rules_on_what_comes_direct() {
    let mut w = World::new();
    // b's rules: a may send b udp/53 only (and pings, to probe nothing
    // else); a's side is open, as a compromised sender's would be.
    w.rules[1] = PairRules {
        enforce: true,
        rules: vec![PairRule {
            from: 1,
            to: B.into(),
            services: vec!["udp/53".parse().unwrap()],
        }],
    };
    w.pair_epoch(1);
    assert_eq!(w.path_of(0), "direct");
    let denied = |w: &mut World, i: usize| {
        w.spokes[i]
            .plane
            .status()
            .counters
            .dropped
            .get("denied")
            .copied()
            .unwrap_or(0)
    };
    let got = |w: &mut World| w.spokes[1].plane.to_tun().packets.len();
    let before = got(&mut w);
    let dns = crate::test_packets::udp_ports(A, 5000, B, 53, b"query");
    let other = crate::test_packets::udp_ports(A, 5000, B, 80, b"not allowed");
    w.spokes[0].plane.handle_tun(&dns);
    w.spokes[0].plane.handle_tun(&other);
    w.settle();
    assert_eq!(got(&mut w), before + 1, "only the allowed flow arrives");
    assert_eq!(denied(&mut w, 1), 1, "b dropped the other");
    // b's answer to the allowed flow passes b's own gate on the way out,
    // and a flow b starts that no rule allows is stopped at b.
    let answer = crate::test_packets::udp_ports(B, 53, A, 5000, b"answer");
    let start = crate::test_packets::udp_ports(B, 6000, A, 22, b"not allowed");
    let a_before = w.spokes[0].plane.to_tun().packets.len();
    w.spokes[1].plane.handle_tun(&answer);
    w.spokes[1].plane.handle_tun(&start);
    w.settle();
    assert_eq!(w.spokes[0].plane.to_tun().packets.len(), a_before + 1);
    assert_eq!(denied(&mut w, 1), 2);
}

#[test]
fn before_its_rules_come_nothing_direct_passes() {
    let mut w = World::new();
    let pair = w.pair();
    let epoch = KeyEpoch::issue(1, 0, &mut w.rng);
    for i in 0..2 {
        let peer = w.peer_of(i);
        let candidates = peer.candidates.clone();
        let plane = &mut w.spokes[i].plane;
        plane.pair_command(PairCommand::Hold {
            pair,
            peer,
            epoch: epoch.clone(),
        });
        plane.pair_command(PairCommand::Use {
            pair,
            epoch: 1,
            candidates,
        });
    }
    w.advance(0);
    assert_eq!(w.path_of(0), "direct", "the path works");
    let before = w.spokes[1].plane.to_tun().packets.len();
    w.spokes[0].plane.handle_tun(&udp(A, B, b"no rules yet"));
    w.settle();
    assert_eq!(w.spokes[1].plane.to_tun().packets.len(), before);
}

#[test]
fn a_spoke_whose_address_changes_tells_its_peer_and_the_hub_at_once() {
    let mut w = World::new();
    w.pair_epoch(1);
    assert_eq!(w.path_of(1), "direct");
    // a moves and says so before sending anything else: b's next packet
    // already goes to the new address, nothing lost, nothing relayed.
    let moved = SocketAddr::from(([198, 51, 100, 7], 41_000));
    w.spokes[0].at = moved;
    w.spokes[0].plane.underlay_changed();
    w.settle();
    let b_view = &w.spokes[1].plane.status().peers[0];
    assert_eq!(b_view.endpoint.as_deref(), Some("198.51.100.7:41000"));
    let relayed_before = relayed(&mut w);
    let before = w.spokes[0].plane.to_tun().packets.len();
    for k in 0..10 {
        let p = udp(B, A, format!("to the new address {k}").as_bytes());
        w.spokes[1].plane.handle_tun(&p);
        w.advance(10);
    }
    assert_eq!(w.spokes[0].plane.to_tun().packets.len() - before, 10);
    assert_eq!(relayed(&mut w), relayed_before, "still direct");
    // The hub heard the keepalive from the new address too: it sends there.
    let relayed_before = relayed(&mut w);
    let before = w.spokes[0].plane.to_tun().packets.len();
    w.hub.handle_tun(&udp(HUB, A, b"from the hub"));
    w.settle();
    assert_eq!(w.spokes[0].plane.to_tun().packets.len() - before, 1);
    assert_eq!(relayed(&mut w), relayed_before);
}

/// IPv6 between paired spokes takes the pair's direct path too (a peer's
/// IPv6 address is its IPv4 host number in the prefix), and what comes
/// direct must come from the peer's IPv6 address and be for ours.
#[test]
fn ipv6_between_paired_spokes_goes_direct_and_sources_are_checked() {
    use crate::test_packets::udp6;
    let mut w = World::new();
    for (i, own6) in ["fd77:1::2", "fd77:1::3"].into_iter().enumerate() {
        w.spokes[i].plane.set_ipv6(Some(own6.parse().unwrap()));
    }
    w.pair_epoch(1);
    assert_eq!(w.path_of(0), "direct");
    let relayed_before = relayed(&mut w);
    let direct_before = w.direct_datagrams;
    let p = udp6("fd77:1::2", "fd77:1::3", b"over ipv6");
    w.spokes[0].plane.handle_tun(&p);
    w.settle();
    assert_eq!(w.spokes[1].plane.to_tun().packets.last(), Some(&p));
    assert_eq!(relayed(&mut w), relayed_before, "not through the hub");
    assert!(w.direct_datagrams > direct_before);
    let forged_before = w.spokes[1]
        .plane
        .status()
        .counters
        .dropped
        .get("forged_source")
        .copied()
        .unwrap_or(0);
    let delivered = w.spokes[1].plane.to_tun().packets.len();
    w.spokes[0]
        .plane
        .handle_tun(&udp6("fd77:1::9", "fd77:1::3", b"forged"));
    w.settle();
    assert_eq!(w.spokes[1].plane.to_tun().packets.len(), delivered);
    let forged_after = w.spokes[1].plane.status().counters.dropped["forged_source"];
    assert_eq!(forged_after, forged_before + 1);
}
