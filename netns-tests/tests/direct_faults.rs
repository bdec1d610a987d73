//! Direct mode (issue 14) under faults, with the real binaries: a revoked
//! spoke's direct traffic, a 50 MB transfer direct, and a pair the access
//! policy does not allow (its replayed and forged direct datagrams). The
//! streams that must lose nothing are in `direct_streams.rs`.
//! Skipped unless root.
//!
//! The tests of this file take a lock and run one at a time: losing no
//! packet of a 100 pps stream is a timing claim, and a 50 MB transfer in
//! a parallel thread on a small machine would make it a claim about the
//! machine instead.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{
    loss, skip_unless_root, Stream, Topology, TwoSpokes, A_TUNNEL, A_WAN, B_TUNNEL, B_WAN,
    HUB_TUNNEL, HUB_WAN,
};

/// One test of this file at a time (see the module's documentation).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes and loads an nftables script in `ns`.
fn nft(t: &Topology, ns: &str, name: &str, script: &str) {
    let path = t.dir().join(format!("{ns}-{name}.nft"));
    std::fs::write(&path, script).expect("write the ruleset");
    t.exec_ok(ns, &["nft", "-f", path.to_str().expect("a UTF-8 path")]);
}

/// The packets counted by the only counter of table `ip count` in `ns`.
fn counted(t: &Topology, ns: &str) -> u64 {
    let out = t.exec_ok(ns, &["nft", "list", "table", "ip", "count"]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| t.fail(&format!("no counter in {out}")))
}

#[test]
fn a_revoked_spokes_direct_traffic_stops_within_a_second() {
    if skip_unless_root("direct_faults::a_revoked_spokes_direct_traffic_stops_within_a_second") {
        return;
    }
    let _serial = serial();
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    net.both_direct();
    // Counts what reaches a's host from b's tunnel address (either path).
    nft(
        t,
        &t.ns_a,
        "count",
        &format!(
            "table ip count {{\n chain in {{ type filter hook input priority 0; ip saddr {B_TUNNEL} counter; }}\n}}\n"
        ),
    );
    // b never hears of its revocation: its control channel is cut (its
    // data plane, the hub's UDP port and a's, stays open).
    nft(
        t,
        &t.ns_b,
        "cut",
        &format!(
            "table ip cut {{\n chain out {{ type filter hook output priority 0; ip daddr {HUB_WAN} tcp dport 51820 drop; }}\n chain in {{ type filter hook input priority 0; ip saddr {HUB_WAN} tcp sport 51820 drop; }}\n}}\n"
        ),
    );
    let stream = Stream::start(t, &t.ns_b, A_TUNNEL, 3000);
    std::thread::sleep(Duration::from_secs(2));
    let relayed_before = t.relayed();
    let c0 = counted(t, &t.ns_a);
    std::thread::sleep(Duration::from_secs(1));
    let c1 = counted(t, &t.ns_a);
    // ping paces itself at 60–100 packets/s on a busy small machine.
    assert!(c1 >= c0 + 40, "b's stream reaches a: {c0} → {c1} in 1 s");
    assert!(
        t.relayed() <= relayed_before + 5,
        "b's stream goes direct, not through the hub"
    );
    assert_eq!(
        t.path_to(&net.b_socket, A_TUNNEL).as_deref(),
        Some("direct")
    );

    t.hub_ok(&["spoke", "revoke", "b"]);
    let revoked = Instant::now();
    // Watch the counter: when did the last packet from b arrive at a?
    let mut last = counted(t, &t.ns_a);
    let mut last_change = Duration::ZERO;
    let mut a_peers_gone = None;
    while revoked.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
        let now = counted(t, &t.ns_a);
        if now != last {
            last = now;
            last_change = revoked.elapsed();
        }
        if a_peers_gone.is_none() && t.peer_of(&net.a_socket, B_TUNNEL).is_none() {
            a_peers_gone = Some(revoked.elapsed());
        }
    }
    let s = stream.stop();
    eprintln!(
        "after the revocation: the last packet from b reached a {last_change:?} after it, a dropped its peer after {a_peers_gone:?}; b's stream: {}; b's own view of a now: {:?}",
        loss(&s),
        t.peer_of(&net.b_socket, A_TUNNEL).map(|p| p["path"].clone())
    );
    assert!(
        a_peers_gone.is_some_and(|d| d <= Duration::from_millis(1500)),
        "a still has b as its peer {:?} after the revocation: {:?}",
        revoked.elapsed(),
        t.peer_of(&net.a_socket, B_TUNNEL)
    );
    assert!(
        last_change <= Duration::from_millis(1200),
        "b's packets still reached a {last_change:?} after its revocation"
    );
    // And a works on: it reaches the hub.
    assert!(t.ping(&t.ns_a, HUB_TUNNEL, 2), "a reaches the hub");
}

#[test]
fn tcp_50mb_direct_arrives_intact_without_the_hub() {
    if skip_unless_root("direct_faults::tcp_50mb_direct_arrives_intact_without_the_hub") {
        return;
    }
    const BYTES: u64 = 50 * 1024 * 1024;
    let _serial = serial();
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    net.both_direct();
    let before = t.relayed();
    let dst = format!("{B_TUNNEL}:9100");
    let start = Instant::now();
    t.tcp_transfer_intact(&t.ns_a, &t.ns_b, &dst, BYTES);
    let took = start.elapsed();
    let after = t.relayed();
    eprintln!(
        "50 MB direct in {took:?}; the hub relayed {} packets meanwhile",
        after - before
    );
    assert!(
        after <= before + 10,
        "the hub relayed {} packets of a direct transfer",
        after - before
    );
    assert_eq!(
        t.path_to(&net.a_socket, B_TUNNEL).as_deref(),
        Some("direct")
    );
    let peer = t.peer_of(&net.a_socket, B_TUNNEL).expect("a's peer b");
    assert!(
        peer["tx_bytes"].as_u64() >= Some(BYTES),
        "the transfer went direct: {peer}"
    );
}

/// The sum of a spoke's drop counters.
fn dropped(t: &Topology, socket: &Path) -> u64 {
    let status = t.spoke_status_json(socket);
    status["counters"]["dropped"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// The first UDP datagram of a pcap file of an Ethernet capture.
struct Captured {
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    payload: Vec<u8>,
}

/// The first datagram in `pcap`, once it holds one.
fn first_datagram(pcap: &Path) -> Option<Captured> {
    let bytes = std::fs::read(pcap).ok()?;
    // Global header (24), record header (16), Ethernet (14), IPv4, UDP (8).
    let caplen = u32::from_le_bytes(bytes.get(32..36)?.try_into().ok()?) as usize;
    let frame = bytes.get(40..40 + caplen)?;
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let addr = |at: usize| -> Option<std::net::Ipv4Addr> {
        let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(b.into())
    };
    let udp = ip.get(ihl..)?;
    let port = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    let len = usize::from(port(4)?);
    Some(Captured {
        src: std::net::SocketAddrV4::new(addr(12)?, port(0)?),
        dst: std::net::SocketAddrV4::new(addr(16)?, port(2)?),
        payload: udp.get(8..len)?.to_vec(),
    })
}

#[test]
fn a_pair_the_policy_does_not_allow_gets_no_epoch_and_its_datagrams_are_dropped() {
    if skip_unless_root("direct_faults::a_pair_the_policy_does_not_allow") {
        return;
    }
    let _serial = serial();
    let net = TwoSpokes::up();
    let t = &net.topo;
    // First a real pair, to capture a direct handshake initiation between
    // a and b (148 bytes: WireGuard message type 1; whichever side sent
    // it) and replay it to its receiver later.
    let pcap = t.dir().join("a-initiation.pcap");
    let tcpdump_log = t.dir().join("tcpdump.log");
    let filter = format!("udp and host {A_WAN} and host {B_WAN} and udp[8] = 1 and udp[4:2] = 156");
    let pcap_arg = pcap.to_string_lossy().into_owned();
    t.spawn(
        &t.ns_a,
        &[
            "tcpdump", "-i", "eth0", "-n", "-U", "-c", "1", "-w", &pcap_arg, &filter,
        ],
        &tcpdump_log,
    );
    t.wait_for("tcpdump to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(&tcpdump_log).is_ok_and(|l| l.contains("listening on"))
    });
    t.direct_on();
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    let mut captured = None;
    t.wait_for(
        "tcpdump to catch a's initiation",
        Duration::from_secs(10),
        || {
            captured = first_datagram(&pcap);
            captured.is_some()
        },
    );
    let init = captured.expect("captured");
    assert_eq!(
        (init.payload.len(), init.payload[0]),
        (148, 1),
        "an initiation"
    );
    // Its receiver, the namespace it came from, and b's data-plane port.
    let to_b = init.dst.ip().to_string() == B_WAN;
    let (receiver, sender_ns, b_port) = if to_b {
        (&net.b_socket, &t.ns_a, init.dst.port())
    } else {
        (&net.a_socket, &t.ns_b, init.src.port())
    };
    eprintln!("captured an initiation {} → {}", init.src, init.dst);

    // Enforce a policy that allows nothing between a and b.
    t.hub_ok(&[
        "access",
        "allow",
        "--from",
        "*",
        "--to",
        "hub",
        "--service",
        "icmp",
    ]);
    t.hub_ok(&["access", "mode", "enforce"]);
    t.wait_for("the pair to end", Duration::from_secs(10), || {
        t.pair_list().is_empty()
            && t.peer_of(&net.a_socket, B_TUNNEL).is_none()
            && t.peer_of(&net.b_socket, A_TUNNEL).is_none()
    });
    // a's traffic to b: refused, and it asks for no pair that it gets.
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 0, "the policy stops a → b");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 10), 0, "the policy stops a → b");
    assert!(t.pair_list().is_empty(), "no pair: {:?}", t.pair_list());
    let a = t.spoke_status_json(&net.a_socket);
    assert_eq!(a["peers"], serde_json::json!([]), "a has no peer: {a}");

    // Straight to the receiver's data-plane port, the replayed initiation
    // of the ended pair; then garbage from a to b's port. Both dropped.
    let handshakes_of =
        |socket: &Path| t.spoke_status_json(socket)["counters"]["handshakes"].as_u64();
    let (handshakes_r, handshakes_b) = (handshakes_of(receiver), handshakes_of(&net.b_socket));
    let d0 = dropped(t, receiver);
    let replay = t.dir().join("initiation.bin");
    std::fs::write(&replay, &init.payload).expect("write the initiation");
    let send = format!(
        "cat {} > /dev/udp/{}/{}",
        replay.display(),
        init.dst.ip(),
        init.dst.port()
    );
    for _ in 0..3 {
        t.exec_ok(sender_ns, &["bash", "-c", &send]);
    }
    t.wait_for(
        "the receiver to count the replayed initiations",
        Duration::from_secs(5),
        || dropped(t, receiver) >= d0 + 3,
    );
    assert_eq!(
        handshakes_of(receiver),
        handshakes_r,
        "no handshake from a replay"
    );
    let r_status = t.spoke_status_json(receiver);
    eprintln!(
        "the receiver dropped the replays: {}",
        r_status["counters"]["dropped"]
    );
    assert_eq!(
        r_status["peers"],
        serde_json::json!([]),
        "no peer from a replay"
    );
    let d1 = dropped(t, &net.b_socket);
    let addr = format!("{B_WAN}:{b_port}");
    t.nettool(&t.ns_a, &["udp-garbage", &addr, "500"]);
    let mut d2 = d1;
    t.wait_for("b to count the garbage", Duration::from_secs(5), || {
        d2 = dropped(t, &net.b_socket);
        d2 >= d1 + 450
    });
    let b_status = t.spoke_status_json(&net.b_socket);
    eprintln!(
        "b dropped {} garbage datagrams: {}",
        d2 - d1,
        b_status["counters"]["dropped"]
    );
    assert_eq!(
        b_status["counters"]["handshakes"].as_u64(),
        handshakes_b,
        "b completed no handshake: {b_status}"
    );
    assert_eq!(b_status["peers"], serde_json::json!([]), "b has no peer");
    assert!(t.pair_list().is_empty(), "still no pair");
    // b works on.
    net.must_be_alive(&net.b);
    assert!(t.ping(&t.ns_b, HUB_TUNNEL, 3), "b still reaches the hub");
}
