//! The hub's and the spokes' data-plane machines talking to each other
//! with no I/O: the test carries their datagrams, the way the daemons'
//! sockets would, and plays the control side (stores, epochs, switches).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rand::{rngs::StdRng, SeedableRng};

use crate::test_packets::udp;

use crate::access::AccessPolicy;
use crate::control::Lifetime;
use crate::datagram::{DataPlane, PacketBatch};
use crate::hub_plane::{HubEvent, HubPlane, LinkSpec};
use crate::keys::{KeyEpoch, PublicKey, StaticKey};
use crate::routing::RouteTable;
use crate::spoke_keys::HeldEpoch;
use crate::spoke_plane::{SpokeEvent, SpokePlane};

const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const HUB_AT: &str = "172.30.0.1:51820";

struct World {
    hub: HubPlane<PacketBatch>,
    spokes: Vec<(SocketAddr, SpokePlane<PacketBatch>)>,
    /// Each spoke's public key and first epoch, as the hub's control side
    /// knows them.
    keys: Vec<PublicKey>,
    first: Vec<KeyEpoch>,
    rng: StdRng,
}

impl World {
    fn new(spokes: u8) -> Self {
        let mut rng = StdRng::seed_from_u64(61);
        let hub_key = Arc::new(StaticKey::generate(&mut rng));
        let routes = RouteTable::new("10.77.0.0/24".parse().unwrap(), HUB, vec![]);
        let access = Arc::new(AccessPolicy::default().compile(HUB, &[]));
        let mut hub = HubPlane::<PacketBatch>::new(hub_key.clone(), routes, access);
        let mut list = Vec::new();
        let (mut keys, mut first) = (Vec::new(), Vec::new());
        for n in 0..spokes {
            let key = Arc::new(StaticKey::generate(&mut rng));
            let epoch = KeyEpoch::issue(1, 0, &mut rng);
            hub.upsert(LinkSpec {
                id: u32::from(n) + 1,
                public_key: key.public(),
                tunnel_addr: Ipv4Addr::new(10, 77, 0, n + 2),
                tunnel_addr6: None,
                epochs: vec![epoch.clone()],
                handshake_epochs: vec![1],
                carry: true,
                confirmed: 0,
            });
            keys.push(key.public());
            first.push(epoch.clone());
            let held = HeldEpoch {
                epoch,
                lifetime: Lifetime::default(),
            };
            let at = SocketAddr::from(([192, 0, 2, n + 2], 40_000));
            let mut spoke = SpokePlane::<PacketBatch>::new(
                key,
                hub_key.public(),
                HUB_AT.parse().unwrap(),
                0,
                (vec![held], 0),
                100,
            );
            spoke.start();
            list.push((at, spoke));
        }
        Self {
            hub,
            spokes: list,
            keys,
            first,
            rng,
        }
    }

    /// Carries datagrams both ways until nothing moves.
    fn settle(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            for (at, spoke) in &mut self.spokes {
                for (_, d) in spoke.outbox().take_all() {
                    self.hub.handle_datagram(*at, &d);
                    moved = true;
                }
            }
            for (to, d) in self.hub.outbox().take_all() {
                if let Some((_, spoke)) = self.spokes.iter_mut().find(|(at, _)| *at == to) {
                    spoke.handle_datagram(HUB_AT.parse().unwrap(), &d);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the machines never settled");
    }
}

/// A spoke's packet reaches the hub's TUN and another spoke through the
/// relay; each machine reports what its control side must do.
#[test]
fn hub_and_spokes_carry_traffic_with_no_io() {
    let mut w = World::new(2);
    w.settle();
    let (a, b) = (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3));
    let to_hub = udp(a, HUB, b"to the hub");
    let to_b = udp(a, b, b"to b");
    w.spokes[0].1.handle_tun(&to_hub);
    w.spokes[0].1.handle_tun(&to_b);
    w.settle();
    assert_eq!(w.hub.to_tun().packets, vec![to_hub]);
    assert_eq!(w.spokes[1].1.to_tun().packets, vec![to_b]);
    // Both spokes confirmed epoch 1: each asks its shell to store it first.
    for (_, s) in &mut w.spokes {
        let events: Vec<SpokeEvent> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(events, vec![SpokeEvent::StoreCurrent(1)]);
        assert_eq!(s.status().epoch, Some(1));
    }
    let confirmed = std::iter::from_fn(|| w.hub.poll_event())
        .filter(|e| matches!(e, HubEvent::Confirmed { epoch: 1, .. }))
        .count();
    assert_eq!(confirmed, 2);
}

/// A rotation driven the way the control sides drive it: the hub takes
/// epoch 2 for handshakes, the spoke holds it and is told to switch; the
/// traffic moves to 2, the hub and the spoke confirm it, and the spoke
/// erases epoch 1 after its grace.
#[test]
fn a_rotation_moves_traffic_to_the_new_epoch() {
    let mut w = World::new(1);
    w.settle();
    while w.spokes[0].1.poll_event().is_some() {}
    while w.hub.poll_event().is_some() {}
    let e2 = KeyEpoch::issue(2, 0, &mut w.rng);
    // The hub's control side: the spoke reported receipt of epoch 2, so it
    // takes handshakes; epoch 1 still carries traffic.
    w.hub.upsert(LinkSpec {
        id: 1,
        public_key: w.keys[0],
        tunnel_addr: Ipv4Addr::new(10, 77, 0, 2),
        tunnel_addr6: None,
        epochs: vec![w.first[0].clone(), e2.clone()],
        handshake_epochs: vec![1, 2],
        carry: true,
        confirmed: 1,
    });
    let spoke = &mut w.spokes[0].1;
    spoke.hold(HeldEpoch {
        epoch: e2,
        lifetime: Lifetime {
            slack_secs: 5,
            ..Lifetime::default()
        },
    });
    spoke.set_now(200);
    spoke.switch_to(2);
    w.settle();
    let spoke = &mut w.spokes[0].1;
    assert_eq!(spoke.status().epoch, Some(2));
    assert_eq!(spoke.poll_event(), Some(SpokeEvent::StoreCurrent(2)));
    let packet = udp(Ipv4Addr::new(10, 77, 0, 2), HUB, b"on epoch 2");
    spoke.handle_tun(&packet);
    w.settle();
    assert_eq!(w.hub.to_tun().packets.last(), Some(&packet));
    let hub_saw: Vec<HubEvent> = std::iter::from_fn(|| w.hub.poll_event()).collect();
    assert!(
        hub_saw.iter().any(|e| matches!(
            e,
            HubEvent::Confirmed {
                spoke: 1,
                epoch: 2,
                ..
            }
        )),
        "{hub_saw:?}"
    );
    // Epoch 1 goes after epoch 2's slack, on the spoke's clock.
    let spoke = &mut w.spokes[0].1;
    spoke.set_now(204);
    spoke.handle_timeout();
    assert_eq!(spoke.status().held, vec![1, 2]);
    spoke.set_now(205);
    spoke.handle_timeout();
    assert_eq!(spoke.status().held, vec![2]);
    assert_eq!(spoke.poll_event(), Some(SpokeEvent::EraseBelow(2)));
}

/// Group multicast through the relay: three members and an outsider; a
/// member's numbered datagrams reach each other member's TUN once and the
/// outsider never, a member the hub no longer lists stops getting them,
/// and what the outsider sends into the range goes nowhere.
#[test]
fn group_multicast_reaches_every_other_member_once() {
    use crate::group_keys::multicast_key;
    use crate::multicast::{group_tag, FanoutGroup, MemberGroup, DEFAULT_RATE_PPS};

    let mut w = World::new(4);
    let addr = |i: u8| Ipv4Addr::new(10, 77, 0, i + 2);
    let range: ipnet::Ipv4Net = "239.77.1.0/24".parse().unwrap();
    let epoch = multicast_key("staff", &KeyEpoch::issue(1, 0, &mut w.rng));
    let carry = |w: &mut World, members: &[u8]| {
        w.hub.set_multicast(FanoutGroup {
            tag: group_tag("staff"),
            ranges: vec![range],
            members: members
                .iter()
                .map(|i| (u32::from(*i) + 1, addr(*i)))
                .collect(),
            rate_pps: DEFAULT_RATE_PPS,
        });
        for i in members {
            let spoke = &mut w.spokes[usize::from(*i)].1;
            spoke.set_multicast(MemberGroup {
                name: "staff".into(),
                ranges: vec![range],
                members: members.iter().map(|m| addr(*m)).collect(),
                keys: vec![epoch.clone()],
                current: 1,
                rate_pps: DEFAULT_RATE_PPS,
            });
        }
    };
    for (i, (_, spoke)) in w.spokes.iter_mut().enumerate() {
        spoke.set_network(addr(i as u8), "10.77.0.0/24".parse().unwrap(), HUB);
        spoke.seed_multicast([i as u8; 12], 1);
    }
    carry(&mut w, &[0, 1, 2]);
    w.settle();
    let dst = Ipv4Addr::new(239, 77, 1, 7);
    let numbered = |n: u32| udp(addr(0), dst, &n.to_be_bytes());
    for n in 0..20 {
        w.spokes[0].1.handle_tun(&numbered(n));
        w.settle();
    }
    for member in [1, 2] {
        let got = std::mem::take(&mut w.spokes[member].1.to_tun().packets);
        assert_eq!(
            got,
            (0..20).map(numbered).collect::<Vec<_>>(),
            "member {member}"
        );
    }
    assert!(
        w.spokes[3].1.to_tun().packets.is_empty(),
        "the outsider got nothing"
    );
    assert_eq!(w.hub.status().counters.multicast, 40);

    // Member 2 leaves: the hub and the others stop listing it.
    w.spokes[2].1.remove_multicast("staff");
    carry(&mut w, &[0, 1]);
    w.spokes[0].1.handle_tun(&numbered(20));
    w.settle();
    assert_eq!(w.spokes[1].1.to_tun().packets, vec![numbered(20)]);
    assert!(
        w.spokes[2].1.to_tun().packets.is_empty(),
        "the leaver got nothing"
    );

    // The outsider's packet into the range is refused at its own plane.
    w.spokes[3].1.handle_tun(&udp(addr(3), dst, b"let me in"));
    w.settle();
    let drops = &w.spokes[3].1.status().counters.dropped;
    assert_eq!(drops.get("multicast_no_group"), Some(&1));
    assert!(w.spokes[0].1.to_tun().packets.is_empty());
}
