//! The hub's data plane driven with no I/O: two spokes' tunnels (core
//! `Link`s) handshake with it and send packets; the test moves the
//! datagrams between them by hand.

use std::net::{Ipv4Addr, SocketAddr};

use rand::{rngs::StdRng, SeedableRng};

use crate::test_packets::udp;

use super::*;
use crate::access::AccessPolicy;
use crate::batch::Outbox;
use crate::datagram::PacketBatch;
use crate::keys::KeyEpoch;
use crate::link::Sealed;

const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// One spoke: its key, its tunnel to the hub, its address and underlay.
struct Spoke {
    link: Link,
    addr: Ipv4Addr,
    underlay: SocketAddr,
    out: Outbox<SocketAddr>,
    tun: PacketBatch,
}

/// A hub with spokes 1 and 2 on epoch 1, both active and carried.
fn setup() -> (HubPlane<PacketBatch>, Spoke, Spoke) {
    let mut rng = StdRng::seed_from_u64(51);
    let hub_key = Arc::new(StaticKey::generate(&mut rng));
    let routes = RouteTable::new("10.77.0.0/24".parse().unwrap(), HUB, vec![]);
    let access = Arc::new(AccessPolicy::default().compile(HUB, &[]));
    let mut plane = HubPlane::<PacketBatch>::new(hub_key.clone(), routes, access);
    let mut spoke = |id: u32, last: u8| {
        let key = StaticKey::generate(&mut rng);
        let epoch = KeyEpoch::issue(1, 0, &mut rng);
        let addr = Ipv4Addr::new(10, 77, 0, last);
        plane.upsert(LinkSpec {
            id,
            public_key: key.public(),
            tunnel_addr: addr,
            tunnel_addr6: None,
            epochs: vec![epoch.clone()],
            handshake_epochs: vec![1],
            carry: true,
            confirmed: 0,
        });
        let mut link = Link::new(0, hub_key.public(), 0);
        link.install(&key, &epoch, None);
        Spoke {
            link,
            addr,
            underlay: SocketAddr::from(([192, 0, 2, last], 40_000 + u16::from(last))),
            out: Outbox::new(),
            tun: PacketBatch::default(),
        }
    };
    let a = spoke(1, 2);
    let b = spoke(2, 3);
    (plane, a, b)
}

/// Carries every datagram between the hub and the spokes until all is quiet.
fn exchange(plane: &mut HubPlane<PacketBatch>, spokes: &mut [&mut Spoke]) {
    for _ in 0..10 {
        let mut moved = false;
        for s in spokes.iter_mut() {
            for (_, d) in s.out.take_all() {
                plane.handle_datagram(s.underlay, &d);
                moved = true;
            }
        }
        for (to, d) in plane.outbox().take_all() {
            let s = spokes.iter_mut().find(|s| s.underlay == to).unwrap();
            let tunnel = s.link.newest().unwrap();
            let hub: SocketAddr = "172.30.0.1:51820".parse().unwrap();
            if let Opened::Inner(len) = open_datagram(tunnel, None, hub, &d, &mut s.out, &mut s.tun)
            {
                s.tun.commit(len);
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn send(s: &mut Spoke, packet: &[u8]) {
    let hub: SocketAddr = "172.30.0.1:51820".parse().unwrap();
    let sealed = s.link.newest().unwrap().seal(packet, &mut s.out, hub);
    assert!(
        matches!(sealed, Ok(Sealed::Sent(_) | Sealed::Waiting(_))),
        "{sealed:?}"
    );
}

/// A packet from spoke a to spoke b is relayed by the machine alone: a
/// handshake each, the packet sealed to b, the events the control side
/// needs (each epoch confirmed, no roaming), the counters.
#[test]
fn relays_between_two_spokes_with_no_io() {
    let (mut plane, mut a, mut b) = setup();
    plane.set_now(1_000);
    let to_b = udp(a.addr, b.addr, b"hello b");
    send(&mut a, &to_b);
    // b has no session yet: it starts one too (the hub learns where b is).
    let to_hub = udp(b.addr, HUB, b"hi hub");
    send(&mut b, &to_hub);
    exchange(&mut plane, &mut [&mut a, &mut b]);
    assert_eq!(b.tun.packets, vec![to_b.clone()], "relayed to b");
    assert_eq!(plane.to_tun().packets, vec![to_hub]);
    let events: Vec<HubEvent> = std::iter::from_fn(|| plane.poll_event()).collect();
    let confirmed: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            HubEvent::Confirmed {
                spoke, epoch: 1, ..
            } => Some(*spoke),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed.len(), 2, "{events:?}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, HubEvent::EndpointChanged { .. })));
    let status = plane.status();
    // Relayed at once, or held until b's session was up (here: held).
    assert_eq!(status.counters.relayed + status.counters.queued, 1);
    assert_eq!(status.counters.to_tun, 1);
    assert_eq!(status.links[&1].endpoint, Some(a.underlay));
    // A forged inner source from a is dropped and counted.
    send(&mut a, &udp(Ipv4Addr::new(10, 77, 0, 9), b.addr, b"forged"));
    exchange(&mut plane, &mut [&mut a, &mut b]);
    assert_eq!(b.tun.packets.len(), 1, "nothing more reached b");
    assert_eq!(
        plane.status().counters.dropped.get("forged_source"),
        Some(&1)
    );
    // A removed spoke's packets go nowhere.
    plane.remove(2);
    send(&mut a, &to_b);
    exchange(&mut plane, &mut [&mut a, &mut b]);
    assert_eq!(b.tun.packets.len(), 1);
    assert!(plane.status().counters.dropped.values().sum::<u64>() >= 2);
}

/// A spoke that shows up from a new address is reported as roamed.
#[test]
fn a_spoke_from_a_new_address_is_reported() {
    let (mut plane, mut a, mut b) = setup();
    let one = udp(a.addr, HUB, b"one");
    send(&mut a, &one);
    exchange(&mut plane, &mut [&mut a, &mut b]);
    while plane.poll_event().is_some() {}
    let old = a.underlay;
    a.underlay = "198.51.100.7:5555".parse().unwrap();
    let two = udp(a.addr, HUB, b"two");
    send(&mut a, &two);
    exchange(&mut plane, &mut [&mut a, &mut b]);
    let events: Vec<HubEvent> = std::iter::from_fn(|| plane.poll_event()).collect();
    assert_eq!(
        events,
        vec![HubEvent::EndpointChanged {
            spoke: 1,
            from: old,
            to: a.underlay
        }]
    );
    assert_eq!(plane.to_tun().packets.len(), 2);
}
