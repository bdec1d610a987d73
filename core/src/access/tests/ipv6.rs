//! The access policy over IPv6: the same rules, flows, replies, pings,
//! ICMP errors and fragments as IPv4, with IPv6 prefixes and the hub's
//! and spokes' IPv6 addresses.

use std::net::Ipv6Addr;

use etherparse::{Icmpv6Type, IpNumber, PacketBuilder};

use super::*;

const HUB6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
const LAPTOP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 3);
const PRINTER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 4);
const LAN6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 2);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 1);

/// The spokes of [`spokes`] with their IPv6 addresses.
fn spokes6() -> Vec<SpokeFacts> {
    let mut s = spokes();
    for (f, a) in s.iter_mut().zip([LAPTOP6, SERVER6, PRINTER6]) {
        f.addr6 = Some(a);
    }
    s
}

fn gate6(policy: &AccessPolicy) -> AccessGate {
    AccessGate::new(Arc::new(policy.compile_dual(HUB, Some(HUB6), &spokes6())))
}

fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, &[1, 2, 3])
        .unwrap();
    out
}

fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 1000)
        .write(&mut out, &[9; 10])
        .unwrap();
    out
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64);
    let b = if request {
        b.icmpv6_echo_request(id, 1)
    } else {
        b.icmpv6_echo_reply(id, 1)
    };
    b.write(&mut out, &[0; 8]).unwrap();
    out
}

/// A Packet Too Big from `from` to the sender of `original`.
fn too_big_about(from: Ipv6Addr, to: Ipv6Addr, original: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(from.octets(), to.octets(), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut out, &original[..original.len().min(48)])
        .unwrap();
    out
}

/// A UDP datagram cut in two behind IPv6 fragment headers (RFC 8200):
/// the first piece holds the UDP header, the second follows at 16 bytes.
fn fragments6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, id: u32) -> [Vec<u8>; 2] {
    let whole = udp6(src, sport, dst, dport);
    let mut payload = whole[40..].to_vec();
    payload.resize(40, 7);
    let piece = |offset_units: u16, more: bool, data: &[u8]| {
        let mut out = Vec::new();
        let header = etherparse::Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: (8 + data.len()) as u16,
            next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
            hop_limit: 64,
            source: src.octets(),
            destination: dst.octets(),
        };
        header.write(&mut out).unwrap();
        let frag = etherparse::Ipv6FragmentHeader::new(
            IpNumber::UDP,
            etherparse::IpFragOffset::try_new(offset_units).unwrap(),
            more,
            id,
        );
        frag.write(&mut out).unwrap();
        out.extend_from_slice(data);
        out
    };
    [
        piece(0, true, &payload[..16]),
        piece(2, false, &payload[16..]),
    ]
}

#[test]
fn ipv6_flows_follow_prefix_spoke_and_port_rules() {
    let mut g = gate6(&enforcing(&[
        rule("user:alice", "fd50::/64", &["tcp/22"]),
        rule("spoke:laptop", "spoke:server", &["udp/53"]),
    ]));
    let laptop = Origin::Spoke(1);
    assert!(g.check(laptop, &tcp6(LAPTOP6, 40000, LAN6, 22), 0));
    assert!(!g.check(laptop, &tcp6(LAPTOP6, 40000, LAN6, 23), 0));
    assert!(
        g.check(Origin::Local, &tcp6(LAN6, 22, LAPTOP6, 40000), 1),
        "the reply"
    );
    assert!(
        !g.check(Origin::Local, &tcp6(LAN6, 22, LAPTOP6, 40001), 1),
        "not a reply to anything"
    );
    // A spoke selector covers both of the spoke's addresses.
    assert!(g.check(laptop, &udp6(LAPTOP6, 5000, SERVER6, 53), 2));
    assert!(g.check(laptop, &udp(LAPTOP, 5000, SERVER, 53), 2));
    assert!(!g.check(laptop, &udp6(LAPTOP6, 5000, PRINTER6, 53), 2));
    assert!(!g.check(Origin::Spoke(3), &udp6(PRINTER6, 5000, SERVER6, 53), 2));
    // An IPv4 prefix names no IPv6 address.
    let mut g = gate6(&enforcing(&[rule("*", "192.168.77.0/24", &["any"])]));
    assert!(!g.check(laptop, &tcp6(LAPTOP6, 40000, LAN6, 22), 3));
    // `*` names both families.
    let mut g = gate6(&enforcing(&[rule("spoke:laptop", "*", &["tcp/22"])]));
    assert!(g.check(laptop, &tcp6(LAPTOP6, 40000, LAN6, 22), 4));
    assert!(g.check(laptop, &tcp(LAPTOP, 40000, LAN_HOST, 22), 4));
}

#[test]
fn icmp_names_icmpv6_and_packet_too_big_reaches_the_sender() {
    let mut g = gate6(&enforcing(&[
        rule("spoke:laptop", "hub", &["icmp"]),
        rule("spoke:laptop", "fd50::/64", &["tcp/443"]),
    ]));
    let laptop = Origin::Spoke(1);
    assert!(g.check(laptop, &echo6(LAPTOP6, HUB6, 7, true), 0));
    assert!(g.check(Origin::Local, &echo6(HUB6, LAPTOP6, 7, false), 0));
    assert!(
        !g.check(Origin::Local, &echo6(HUB6, LAPTOP6, 7, true), 0),
        "a request the other way is a flow of its own"
    );
    assert!(g.check(laptop, &echo(LAPTOP, HUB, 7, true), 0), "and ICMP");
    // Path MTU discovery: a router's Packet Too Big about an allowed
    // flow reaches its sender; one about nothing tracked does not.
    let sent = tcp6(LAPTOP6, 40000, LAN6, 443);
    assert!(g.check(laptop, &sent, 1));
    assert!(g.check(Origin::Local, &too_big_about(ROUTER6, LAPTOP6, &sent), 2));
    let other = tcp6(LAPTOP6, 40001, LAN6, 8443);
    assert!(!g.check(Origin::Local, &too_big_about(ROUTER6, LAPTOP6, &other), 2));
    let probe = Flow::probe(LAPTOP6.into(), HUB6.into(), &"icmp".parse().unwrap()).unwrap();
    assert_eq!(probe.proto, 58, "an IPv6 probe of icmp is ICMPv6");
}

#[test]
fn ipv6_fragments_follow_their_first() {
    let mut g = gate6(&enforcing(&[rule(
        "spoke:laptop",
        "spoke:server",
        &["udp/53"],
    )]));
    let laptop = Origin::Spoke(1);
    let [first, later] = fragments6(LAPTOP6, 5000, SERVER6, 53, 0x1234_5678);
    let (flow, kind) = Flow::parse(&first).unwrap();
    assert_eq!(flow.ports, Some((5000, 53)));
    assert_eq!(kind, PacketKind::FirstFragment(0x1234_5678));
    assert!(g.check(laptop, &first, 0));
    assert!(g.check(laptop, &later, 1));
    let [first, later] = fragments6(LAPTOP6, 5000, SERVER6, 54, 2);
    assert!(!g.check(laptop, &first, 2));
    assert!(!g.check(laptop, &later, 3));
    let [_, stray] = fragments6(LAPTOP6, 5000, SERVER6, 53, 3);
    assert!(!g.check(laptop, &stray, 4), "no first fragment seen");
}

#[test]
fn rules_of_both_families_read_back_and_mixed_ones_are_refused() {
    let net: Selector = "fd50:10::/64".parse().unwrap();
    assert_eq!(net.to_string(), "fd50:10::/64");
    assert_eq!(
        "fd50:10::5/64".parse::<Selector>().unwrap().to_string(),
        "fd50:10::/64",
        "host bits cleared"
    );
    assert_eq!(
        "net:fd77:1::2".parse::<Selector>().unwrap().to_string(),
        "fd77:1::2/128"
    );
    let mut p = AccessPolicy::default();
    let mixed = p.allow(rule("10.77.0.0/24", "fd50::/64", &["any"]));
    assert!(
        matches!(&mixed, Err(AccessError::Syntax(m)) if m.contains("mixes IPv4 and IPv6")),
        "{mixed:?}"
    );
    assert!(p.allow(rule("fd77:1::/64", "fd50::/64", &["any"])).is_ok());
    assert!(p.allow(rule("spoke:laptop", "fd50::/64", &["any"])).is_ok());
}

#[test]
fn ipv6_junk_never_panics() {
    let mut g = gate6(&enforcing(&[rule("*", "*", &["any"])]));
    let good = fragments6(LAPTOP6, 1, SERVER6, 2, 9)[0].clone();
    for len in 0..good.len() {
        let _ = g.check(Origin::Spoke(1), &good[..len], 0);
    }
    // Random bytes behind an IPv6 header whose next header is each
    // extension type in turn, with every payload length.
    let mut x: u32 = 0x9e37_79b9;
    for round in 0..2000u32 {
        let mut p = good.clone();
        for b in p.iter_mut().skip(40) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        p[6] = [0u8, 43, 44, 50, 51, 60, 58, 6, 17][(round % 9) as usize];
        p[4..6].copy_from_slice(&((round % 64) as u16).to_be_bytes());
        let _ = Flow::parse(&p);
        let _ = g.check(Origin::Spoke(1), &p, 0);
    }
}

#[test]
fn a_sender_address_rule_allows_that_family_only() {
    let mut g = gate6(&enforcing(&[rule(
        "10.77.0.2",
        "spoke:server",
        &["udp/53"],
    )]));
    let laptop = Origin::Spoke(1);
    assert!(g.check(laptop, &udp(LAPTOP, 5000, SERVER, 53), 0));
    assert!(
        !g.check(laptop, &udp6(LAPTOP6, 5000, SERVER6, 53), 0),
        "an IPv4 sender rule let the spoke's IPv6 through"
    );
    let mut g = gate6(&enforcing(&[rule("fd77:1::/64", "hub", &["icmp"])]));
    assert!(g.check(laptop, &echo6(LAPTOP6, HUB6, 1, true), 0));
    assert!(!g.check(laptop, &echo(LAPTOP, HUB, 1, true), 0));
}

#[test]
fn a_source_route_still_to_follow_is_refused() {
    let mut g = gate6(&enforcing(&[rule("*", "*", &["any"])]));
    // IPv6 header, a routing header (type 0... segments left 1), UDP.
    let inner = udp6(LAPTOP6, 5000, SERVER6, 53);
    let with_route = |segments_left: u8| {
        let mut p = inner[..40].to_vec();
        p[6] = 43; // next header: routing
        let mut routing = vec![17u8, 2, 4, segments_left, 0, 0, 0, 0];
        routing.extend_from_slice(&LAN6.octets());
        p.extend_from_slice(&routing);
        p.extend_from_slice(&inner[40..]);
        let len = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p
    };
    assert!(!g.check(Origin::Spoke(1), &with_route(1), 0));
    assert!(
        g.check(Origin::Spoke(1), &with_route(0), 0),
        "a route already followed"
    );
}

#[test]
fn later_fragments_match_their_first_whatever_their_data_looks_like() {
    let mut g = gate6(&enforcing(&[rule(
        "spoke:laptop",
        "spoke:server",
        &["udp/53"],
    )]));
    let [first, mut later] = fragments6(LAPTOP6, 5000, SERVER6, 53, 42);
    // The later fragment's header names another next header (allowed by
    // RFC 8200): its data is no header, and it still follows its first.
    later[40] = 60;
    assert!(g.check(Origin::Spoke(1), &first, 0));
    assert!(g.check(Origin::Spoke(1), &later, 1));
}
