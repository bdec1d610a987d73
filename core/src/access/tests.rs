//! The access policy's rules, case by case.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{Icmpv4Type, LaxIpv4Slice};

use super::*;

const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const LAPTOP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const PRINTER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 4);
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, &[1, 2, 3])
        .unwrap();
    out
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 1000)
        .write(&mut out, &[9; 10])
        .unwrap();
    out
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    b.write(&mut out, &[0; 8]).unwrap();
    out
}

fn unreachable_about(from: Ipv4Addr, original: &[u8]) -> Vec<u8> {
    let to = LaxIpv4Slice::from_slice(original)
        .unwrap()
        .0
        .header()
        .source_addr();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(from.octets(), to.octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
        ))
        .write(&mut out, &original[..28])
        .unwrap();
    out
}

fn rule(from: &str, to: &str, services: &[&str]) -> Rule {
    Rule {
        from: from.parse().unwrap(),
        to: to.parse().unwrap(),
        services: services.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// laptop (1, alice logged in), server (2, a service spoke), printer (3).
fn spokes() -> Vec<SpokeFacts> {
    vec![
        SpokeFacts {
            id: 1,
            name: "laptop".into(),
            addr: LAPTOP,
            addr6: None,
            users: vec!["alice".into()],
            branch: vec![],
        },
        SpokeFacts {
            id: 2,
            name: "server".into(),
            addr: SERVER,
            addr6: None,
            users: vec![],
            branch: vec![],
        },
        SpokeFacts {
            id: 3,
            name: "printer".into(),
            addr: PRINTER,
            addr6: None,
            users: vec![],
            branch: vec![],
        },
    ]
}

fn gate(policy: &AccessPolicy) -> AccessGate {
    AccessGate::new(Arc::new(policy.compile(HUB, &spokes())))
}

fn enforcing(rules: &[Rule]) -> AccessPolicy {
    let mut p = AccessPolicy {
        mode: Mode::Enforce,
        ..Default::default()
    };
    p.add_group("eng").unwrap();
    p.add_member("eng", "user:alice".parse().unwrap()).unwrap();
    p.add_group("servers").unwrap();
    p.add_member("servers", "spoke:server".parse().unwrap())
        .unwrap();
    for r in rules {
        p.allow(r.clone()).unwrap();
    }
    p
}

#[test]
fn selectors_and_services_read_and_print_back() {
    for text in [
        "*",
        "hub",
        "spoke:laptop-alice",
        "user:alice@example.com",
        "group:eng",
        "hub:branch-a",
        "192.168.10.0/24",
        "10.77.0.5/32",
    ] {
        let s: Selector = text.parse().unwrap();
        assert_eq!(s.to_string(), text);
    }
    assert_eq!("any".parse::<Selector>().unwrap(), Selector::Any);
    assert_eq!(
        "10.77.0.5".parse::<Selector>().unwrap().to_string(),
        "10.77.0.5/32"
    );
    assert_eq!(
        "net:192.168.10.7/24"
            .parse::<Selector>()
            .unwrap()
            .to_string(),
        "192.168.10.0/24"
    );
    for text in ["any", "icmp", "tcp", "udp/53", "tcp/8000-8100"] {
        let s: Service = text.parse().unwrap();
        assert_eq!(s.to_string(), text);
    }
    assert_eq!(
        "tcp/22-22".parse::<Service>().unwrap().to_string(),
        "tcp/22"
    );
}

#[test]
fn bad_text_is_refused_with_the_reason() {
    for bad in [
        "",
        "spoke:",
        "user:a b",
        "host:x",
        "10.77.0.300",
        "net:hub",
        "group:",
        &format!("spoke:{}", "x".repeat(65)),
    ] {
        assert!(bad.parse::<Selector>().is_err(), "{bad:?} parsed");
    }
    for bad in [
        "",
        "tcp/",
        "tcp/0",
        "tcp/65536",
        "tcp/90-80",
        "icmp/8",
        "any/1",
        "sctp",
        "udp/1-",
    ] {
        let e = bad.parse::<Service>();
        assert!(e.is_err(), "{bad:?} parsed");
    }
    let e = "tcp/90-80".parse::<Service>().unwrap_err().to_string();
    assert!(e.contains("first port"), "{e}");
    assert!("group:eng".parse::<Member>().is_err());
    assert!("*".parse::<Member>().is_err());
    assert!("spoke:x".parse::<Member>().is_ok());
    assert!("open".parse::<Mode>().is_ok());
    assert!("closed".parse::<Mode>().is_err());
}

#[test]
fn open_mode_passes_everything() {
    let mut p = enforcing(&[]);
    p.mode = Mode::Open;
    let mut g = gate(&p);
    assert!(!g.enforcing());
    assert!(g.check(Origin::Spoke(1), &udp(LAPTOP, 1, SERVER, 2), 0));
    assert!(g.check(Origin::Local, &udp(LAN_HOST, 1, SERVER, 2), 0));
    assert_eq!(g.tracked(), 0);
}

#[test]
fn enforce_with_no_rule_passes_nothing() {
    let mut g = gate(&enforcing(&[]));
    assert!(g.enforcing());
    assert!(!g.check(Origin::Spoke(1), &udp(LAPTOP, 1, SERVER, 2), 0));
    assert!(!g.check(Origin::Spoke(1), &echo(LAPTOP, HUB, 7, true), 0));
    assert!(!g.check(Origin::Local, &udp(LAN_HOST, 1, LAPTOP, 2), 0));
    assert!(!g.check(Origin::Spoke(1), &[0x45, 0, 0], 0));
}

#[test]
fn a_user_rule_follows_the_user_and_its_ports() {
    let mut g = gate(&enforcing(&[rule(
        "user:alice",
        "192.168.77.0/24",
        &["tcp/22", "icmp"],
    )]));
    // alice is logged in on the laptop: its packets are hers.
    assert!(g.check(Origin::Spoke(1), &tcp(LAPTOP, 40000, LAN_HOST, 22), 0));
    assert!(g.check(Origin::Spoke(1), &echo(LAPTOP, LAN_HOST, 3, true), 0));
    assert!(!g.check(Origin::Spoke(1), &tcp(LAPTOP, 40000, LAN_HOST, 23), 0));
    assert!(!g.check(Origin::Spoke(1), &udp(LAPTOP, 40000, LAN_HOST, 22), 0));
    assert!(!g.check(Origin::Spoke(1), &tcp(LAPTOP, 40000, SERVER, 22), 0));
    // The server spoke has no alice logged in.
    assert!(!g.check(Origin::Spoke(2), &tcp(SERVER, 40000, LAN_HOST, 22), 0));
    // When alice logs out, the laptop's packets are nobody's.
    let mut facts = spokes();
    facts[0].users.clear();
    let p = enforcing(&[rule("user:alice", "192.168.77.0/24", &["tcp/22"])]);
    g.replace(Arc::new(p.compile(HUB, &facts)));
    assert!(!g.check(Origin::Spoke(1), &tcp(LAPTOP, 40001, LAN_HOST, 22), 0));
}

#[test]
fn replies_pass_only_for_tracked_flows_until_they_idle_out() {
    let mut g = gate(&enforcing(&[rule(
        "spoke:laptop",
        "spoke:server",
        &["udp/53"],
    )]));
    let query = udp(LAPTOP, 5000, SERVER, 53);
    let answer = udp(SERVER, 53, LAPTOP, 5000);
    // No query yet: the server cannot send first.
    assert!(!g.check(Origin::Spoke(2), &answer, 0));
    assert!(g.check(Origin::Spoke(1), &query, 1_000));
    assert!(g.check(Origin::Spoke(2), &answer, 2_000));
    // Another port of the laptop is no reply.
    assert!(!g.check(Origin::Spoke(2), &udp(SERVER, 53, LAPTOP, 5001), 2_000));
    assert!(!g.check(Origin::Spoke(2), &udp(SERVER, 54, LAPTOP, 5000), 2_000));
    // Every reply refreshes the flow; two idle minutes end it.
    assert!(g.check(Origin::Spoke(2), &answer, 100_000));
    assert!(g.check(Origin::Spoke(2), &answer, 219_000));
    assert!(!g.check(Origin::Spoke(2), &answer, 400_000));
}

#[test]
fn pings_are_answered_by_echo_id() {
    let mut g = gate(&enforcing(&[rule("spoke:laptop", "hub", &["icmp"])]));
    assert!(g.check(Origin::Spoke(1), &echo(LAPTOP, HUB, 11, true), 0));
    assert!(g.check(Origin::Local, &echo(HUB, LAPTOP, 11, false), 10));
    assert!(!g.check(Origin::Local, &echo(HUB, LAPTOP, 12, false), 10));
    // The hub may not ping the laptop on its own, not even with the
    // identifier of the laptop's own ping.
    assert!(!g.check(Origin::Local, &echo(HUB, LAPTOP, 13, true), 10));
    assert!(!g.check(Origin::Local, &echo(HUB, LAPTOP, 11, true), 10));
}

#[test]
fn groups_name_member_spokes_and_logged_in_users() {
    let mut g = gate(&enforcing(&[rule("group:eng", "group:servers", &["tcp"])]));
    assert!(g.check(Origin::Spoke(1), &tcp(LAPTOP, 1, SERVER, 443), 0));
    assert!(!g.check(Origin::Spoke(1), &tcp(LAPTOP, 1, PRINTER, 443), 0));
    assert!(!g.check(Origin::Spoke(3), &tcp(PRINTER, 1, SERVER, 443), 0));
    // Taking alice out of eng cuts the laptop off, and its tracked flows.
    let mut p = enforcing(&[rule("group:eng", "group:servers", &["tcp"])]);
    p.remove_member("eng", &"user:alice".parse().unwrap())
        .unwrap();
    g.replace(Arc::new(p.compile(HUB, &spokes())));
    assert!(!g.check(Origin::Spoke(2), &tcp(SERVER, 443, LAPTOP, 1), 0));
    assert!(!g.check(Origin::Spoke(1), &tcp(LAPTOP, 1, SERVER, 443), 0));
    assert_eq!(g.tracked(), 0);
}

#[test]
fn a_new_policy_keeps_the_flows_it_still_allows() {
    let rules = [
        rule("spoke:laptop", "spoke:server", &["tcp/22"]),
        rule("spoke:laptop", "spoke:printer", &["tcp/631"]),
    ];
    let mut g = gate(&enforcing(&rules));
    assert!(g.check(Origin::Spoke(1), &tcp(LAPTOP, 1, SERVER, 22), 0));
    assert!(g.check(Origin::Spoke(1), &tcp(LAPTOP, 2, PRINTER, 631), 0));
    let mut p = enforcing(&rules);
    p.remove_rule(2).unwrap();
    g.replace(Arc::new(p.compile(HUB, &spokes())));
    assert!(g.check(Origin::Spoke(2), &tcp(SERVER, 22, LAPTOP, 1), 5));
    assert!(!g.check(Origin::Spoke(3), &tcp(PRINTER, 631, LAPTOP, 2), 5));
    assert_eq!(g.tracked(), 1);
}

#[test]
fn the_lan_reaches_spokes_only_through_address_rules() {
    let mut g = gate(&enforcing(&[
        rule("192.168.77.0/24", "spoke:server", &["tcp/8080"]),
        rule("user:alice", "*", &["any"]),
    ]));
    assert!(g.check(Origin::Local, &tcp(LAN_HOST, 1, SERVER, 8080), 0));
    assert!(!g.check(Origin::Local, &tcp(LAN_HOST, 1, SERVER, 8081), 0));
    assert!(!g.check(Origin::Local, &tcp(LAN_HOST, 1, LAPTOP, 8080), 0));
    // A user rule never matches packets from the LAN, even to alice's laptop.
    assert!(!g.check(Origin::Local, &udp(LAN_HOST, 1, LAPTOP, 9), 0));
    assert!(g.check(Origin::Spoke(1), &udp(LAPTOP, 9, LAN_HOST, 9), 0));
}

#[test]
fn icmp_errors_about_tracked_flows_pass() {
    let mut g = gate(&enforcing(&[rule(
        "spoke:laptop",
        "192.168.77.0/24",
        &["tcp/443"],
    )]));
    let out = tcp(LAPTOP, 40000, LAN_HOST, 443);
    assert!(g.check(Origin::Spoke(1), &out, 0));
    // "Fragmentation needed" from a router on the way (the hub here).
    assert!(g.check(Origin::Local, &unreachable_about(HUB, &out), 1));
    let other = tcp(LAPTOP, 40001, LAN_HOST, 444);
    assert!(!g.check(Origin::Local, &unreachable_about(HUB, &other), 1));
    // An error quoting a tracked flow, sent to anyone but that flow's
    // sender, is no error about it: the laptop cannot reach the server so.
    let mut forged = unreachable_about(LAPTOP, &out);
    forged[16..20].copy_from_slice(&SERVER.octets());
    assert!(!g.check(Origin::Spoke(1), &forged, 1));
}

#[test]
fn policy_edits_check_groups_numbers_and_limits() {
    let mut p = enforcing(&[]);
    assert_eq!(
        p.allow(rule("group:nope", "*", &["any"])),
        Err(AccessError::NoSuchGroup("nope".into()))
    );
    assert_eq!(p.allow(rule("group:eng", "*", &["any"])), Ok(1));
    assert_eq!(
        p.remove_group("eng"),
        Err(AccessError::GroupInUse {
            name: "eng".into(),
            rules: vec![1]
        })
    );
    assert_eq!(
        p.add_group("eng"),
        Err(AccessError::GroupExists("eng".into()))
    );
    assert!(p.add_group("bad name").is_err());
    assert_eq!(p.remove_rule(0), Err(AccessError::NoSuchRule(0)));
    assert_eq!(p.remove_rule(2), Err(AccessError::NoSuchRule(2)));
    assert!(p.remove_rule(1).is_ok());
    assert!(p.remove_group("eng").is_ok());
    assert_eq!(
        p.remove_member("servers", &"spoke:printer".parse().unwrap()),
        Err(AccessError::NotAMember {
            group: "servers".into(),
            member: "spoke:printer".into()
        })
    );
    let empty = Rule {
        services: vec![],
        ..rule("*", "*", &["any"])
    };
    assert!(matches!(p.allow(empty), Err(AccessError::TooMany { .. })));
    for _ in 0..MAX_RULES {
        p.allow(rule("*", "*", &["any"])).unwrap();
    }
    assert!(matches!(
        p.allow(rule("*", "*", &["any"])),
        Err(AccessError::TooMany { what: "rules", .. })
    ));
}

#[test]
fn a_removed_user_takes_their_rules_and_memberships_along() {
    let mut p = enforcing(&[
        rule("user:alice", "*", &["any"]),
        rule("spoke:laptop", "user:alice", &["icmp"]),
        rule("group:eng", "hub", &["icmp"]),
    ]);
    assert!(p.names_user("alice"));
    assert!(!p.names_user("bob"));
    assert_eq!(p.forget_user("alice"), (2, 1));
    assert_eq!(p.rules.len(), 1);
    assert!(p.groups["eng"].is_empty());
    assert!(!p.names_user("alice"));
    assert_eq!(p.forget_user("alice"), (0, 0));
}

#[test]
fn the_policy_survives_serialization_as_text() {
    let p = enforcing(&[rule("user:alice", "192.168.77.0/24", &["tcp/22", "icmp"])]);
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains("\"user:alice\""), "{json}");
    assert!(json.contains("\"tcp/22\""), "{json}");
    let back: AccessPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let bytes = postcard::to_allocvec(&p).unwrap();
    let back: AccessPolicy = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, p);
    // A damaged selector in stored text is an error, not a panic.
    let broken = json.replace("user:alice", "user:a b");
    assert!(serde_json::from_str::<AccessPolicy>(&broken).is_err());
}

#[test]
fn the_flow_table_stays_bounded_and_no_origin_fills_it() {
    let flow = |i: u32| Flow {
        proto: 17,
        src: Ipv4Addr::from(i).into(),
        dst: SERVER.into(),
        ports: Some((1, 2)),
    };
    let mut t = FlowTable::default();
    for i in 0..(MAX_FLOWS as u32 + 10) {
        t.note(Origin::Spoke(i % 16), flow(i), u64::from(i), 0);
    }
    assert!(
        t.len() <= MAX_FLOWS && t.len() > MAX_FLOWS / 2,
        "{}",
        t.len()
    );
    let mut t = FlowTable::default();
    for i in 0..(MAX_FLOWS_PER_ORIGIN as u32 + 100) {
        t.note(Origin::Spoke(1), flow(i), 0, 0);
    }
    assert_eq!(t.len(), MAX_FLOWS_PER_ORIGIN);
    t.note(Origin::Spoke(2), flow(u32::MAX), 0, 0);
    assert_eq!(t.len(), MAX_FLOWS_PER_ORIGIN + 1);
    // Idle flows go at the next prune, and make room again.
    t.prune(10 * 60 * 1000);
    assert!(t.is_empty());
    t.note(Origin::Spoke(1), flow(1), 10 * 60 * 1000, 0);
    assert_eq!(t.len(), 1);
}

/// A UDP datagram from `src:sport` to `dst:dport`, cut into a first
/// fragment and a later one (IP identification `id`).
fn fragments(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, id: u16) -> [Vec<u8>; 2] {
    let whole = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
            .udp(sport, dport)
            .write(&mut out, &[7u8; 64])
            .unwrap();
        out
    };
    let payload = &whole[20..];
    let piece = |offset_units: u16, more: bool, data: &[u8]| {
        let mut h = etherparse::Ipv4Header::new(
            data.len() as u16,
            64,
            etherparse::IpNumber::UDP,
            src.octets(),
            dst.octets(),
        )
        .unwrap();
        h.identification = id;
        h.more_fragments = more;
        h.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut out = Vec::new();
        h.write(&mut out).unwrap();
        out.extend_from_slice(data);
        out
    };
    [
        piece(0, true, &payload[..32]),
        piece(4, false, &payload[32..]),
    ]
}

#[test]
fn later_fragments_follow_their_first() {
    let mut g = gate(&enforcing(&[rule(
        "spoke:laptop",
        "spoke:server",
        &["udp/53"],
    )]));
    let [first, later] = fragments(LAPTOP, 5000, SERVER, 53, 77);
    assert!(g.check(Origin::Spoke(1), &first, 0));
    assert!(g.check(Origin::Spoke(1), &later, 1));
    // A datagram to a port no rule allows: neither part passes.
    let [first, later] = fragments(LAPTOP, 5000, SERVER, 54, 78);
    assert!(!g.check(Origin::Spoke(1), &first, 2));
    assert!(!g.check(Origin::Spoke(1), &later, 3));
    // A later fragment with no first one seen, or too late: dropped.
    let [_, stray] = fragments(LAPTOP, 5000, SERVER, 53, 79);
    assert!(!g.check(Origin::Spoke(1), &stray, 4));
    let [first, later] = fragments(LAPTOP, 5000, SERVER, 53, 80);
    assert!(g.check(Origin::Spoke(1), &first, 5));
    assert!(!g.check(Origin::Spoke(1), &later, 60_000));
    // Replies come fragmented too.
    let [first, later] = fragments(SERVER, 53, LAPTOP, 5000, 81);
    assert!(g.check(Origin::Spoke(2), &first, 60_001));
    assert!(g.check(Origin::Spoke(2), &later, 60_002));
}

#[test]
fn parsing_never_panics_on_junk() {
    let mut g = gate(&enforcing(&[rule("*", "*", &["any"])]));
    let good = tcp(LAPTOP, 1, SERVER, 2);
    for len in 0..good.len() {
        let _ = Flow::parse(&good[..len]);
        let _ = g.check(Origin::Spoke(1), &good[..len], 0);
    }
    for seed in 0..200u32 {
        let junk: Vec<u8> = (0..(seed % 80))
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) as u8) | 0x40)
            .collect();
        let _ = g.check(Origin::Local, &junk, 0);
    }
}

#[test]
fn an_admin_can_ask_which_rules_allow_a_flow() {
    let p = enforcing(&[
        rule("spoke:laptop", "192.168.77.0/24", &["tcp/22"]),
        rule("group:eng", "*", &["tcp/1-1024"]),
        rule("192.168.77.0/24", "spoke:server", &["udp"]),
    ]);
    let c = p.compile(HUB, &spokes());
    let ssh = Flow::probe(LAPTOP.into(), LAN_HOST.into(), &"tcp/22".parse().unwrap()).unwrap();
    assert_eq!(c.allowing_rules(Origin::Spoke(1), &ssh), vec![1, 2]);
    assert_eq!(
        c.allowing_rules(Origin::Spoke(2), &ssh),
        Vec::<usize>::new()
    );
    let high = Flow::probe(LAPTOP.into(), LAN_HOST.into(), &"tcp/2000".parse().unwrap()).unwrap();
    assert!(!c.allows(Origin::Spoke(1), &high));
    let dns = Flow::probe(LAN_HOST.into(), SERVER.into(), &"udp/53".parse().unwrap()).unwrap();
    assert_eq!(c.allowing_rules(Origin::Local, &dns), vec![3]);
    assert!(Flow::probe(LAPTOP.into(), SERVER.into(), &Service::ANY).is_none());
    let ping = Flow::probe(LAPTOP.into(), SERVER.into(), &"icmp".parse().unwrap()).unwrap();
    assert!(!c.allows(Origin::Spoke(1), &ping));
}

#[test]
fn a_child_hubs_branch_is_one_selector_both_ways() {
    let p = enforcing(&[
        rule("hub:branch-a", "spoke:server", &["icmp"]),
        rule("spoke:laptop", "hub:branch-a", &["tcp/22"]),
    ]);
    let mut all = spokes();
    all.push(SpokeFacts {
        id: 4,
        name: "branch-a".into(),
        addr: "10.77.0.9".parse().unwrap(),
        addr6: None,
        users: vec![],
        branch: vec!["10.81.0.0/24".parse().unwrap()],
    });
    let c = p.compile(HUB, &all);
    let icmp: Service = "icmp".parse().unwrap();
    let ssh: Service = "tcp/22".parse().unwrap();
    let from_branch = Flow::probe("10.81.0.7".parse().unwrap(), SERVER.into(), &icmp).unwrap();
    assert_eq!(c.allowing_rules(Origin::Spoke(4), &from_branch), vec![1]);
    assert!(
        !c.allows(Origin::Spoke(1), &from_branch),
        "the rule names what comes through the child's link, not an address"
    );
    let into_branch = Flow::probe(LAPTOP.into(), "10.81.0.7".parse().unwrap(), &ssh).unwrap();
    assert_eq!(c.allowing_rules(Origin::Spoke(1), &into_branch), vec![2]);
    let to_child = Flow::probe(LAPTOP.into(), "10.77.0.9".parse().unwrap(), &ssh).unwrap();
    assert!(
        c.allows(Origin::Spoke(1), &to_child),
        "the child hub itself is in its branch"
    );
    let elsewhere = Flow::probe(LAPTOP.into(), "10.82.0.7".parse().unwrap(), &ssh).unwrap();
    assert!(!c.allows(Origin::Spoke(1), &elsewhere));
    // A spoke of that name that is no child hub has no branch.
    all[3].branch.clear();
    let c = p.compile(HUB, &all);
    assert!(!c.allows(Origin::Spoke(4), &from_branch));
    assert!(!c.allows(Origin::Spoke(1), &into_branch));
    assert!(
        !c.allows(Origin::Spoke(1), &to_child),
        "hub:NAME names no plain spoke's address"
    );
}

mod ipv6;
mod pairs;
