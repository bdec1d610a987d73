//! Direct mode (issue 14) under stress and faults, with the real binaries:
//! a 100 packets/s stream across the upgrade and across 20 pair-epoch
//! rotations, a revoked spoke's direct traffic, the hub killed while two
//! spokes talk directly, a 50 MB transfer direct, and a pair the access
//! policy does not allow (its replayed and forged direct datagrams).
//! Skipped unless root.
//!
//! The tests of this file take a lock and run one at a time: losing no
//! packet of a 100 pps stream is a timing claim, and a 50 MB transfer in
//! a parallel thread on a small machine would make it a claim about the
//! machine instead.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{
    skip_unless_root, Topology, TwoSpokes, A_TUNNEL, A_WAN, B_TUNNEL, B_WAN, HUB_TUNNEL, HUB_WAN,
};

/// One test of this file at a time (see the module's documentation).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Both spokes of `net` direct to each other.
fn both_direct(net: &TwoSpokes) {
    let t = &net.topo;
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    t.wait_direct(&t.ns_b, &net.b_socket, A_TUNNEL);
}

/// Echo requests whose replies may still be on their way when a stream is
/// stopped (100 ms at 100 packets/s): not counted as lost.
const IN_FLIGHT: u32 = 10;

/// A 100 packets/s ping stream running in the background (at most `max`
/// packets, so it ends by itself if a test forgets it).
struct Stream {
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    what: String,
    started: Instant,
}

/// What a stream did: requests sent, and the sequence numbers of those
/// never answered (the last [`IN_FLIGHT`] excepted).
#[derive(Debug)]
struct Streamed {
    /// Packets sent a second, on average.
    rate: f64,
    sent: u32,
    answered: u32,
    lost: Vec<u32>,
}

impl Stream {
    fn start(t: &Topology, ns: &str, addr: &str, max: u32) -> Self {
        let max = max.to_string();
        let mut child = t
            .command(
                ns,
                &["ping", "-n", "-i", "0.01", "-W", "1", "-c", &max, addr],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        let mut stdout = child.stdout.take().expect("ping's stdout");
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        Stream {
            child: Some(child),
            out: Some(out),
            what: format!("ping {addr} from {ns}"),
            started: Instant::now(),
        }
    }

    /// Stops the stream (SIGINT: ping prints its summary) and counts.
    fn stop(mut self) -> Streamed {
        let mut child = self.child.take().expect("a running stream");
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let sent: u32 = text
            .lines()
            .find_map(|l| l.split_once(" packets transmitted"))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no summary in {text:?}", self.what));
        let mut seen = vec![false; sent as usize + 1];
        let mut answered = 0;
        for line in text.lines().filter(|l| l.contains("bytes from")) {
            let seq = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(slot) = seq.and_then(|s| seen.get_mut(s)) {
                if !*slot {
                    answered += 1;
                }
                *slot = true;
            }
        }
        let lost = (1..=sent.saturating_sub(IN_FLIGHT))
            .filter(|s| !seen[*s as usize])
            .collect();
        Streamed {
            rate: f64::from(sent) / self.started.elapsed().as_secs_f64(),
            sent,
            answered,
            lost,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The loss of a stream as a short text: how many, and the first few.
fn loss(s: &Streamed) -> String {
    let first: Vec<u32> = s.lost.iter().take(20).copied().collect();
    format!(
        "{} of {} sent ({:.0}/s) lost ({} answered), first lost icmp_seq {first:?}",
        s.lost.len(),
        s.sent,
        s.rate,
        s.answered
    )
}

/// A 100 pps stream a → b that starts on the relay and goes direct:
/// with direct mode `on_first` (then the stream's first packet asks for
/// the pair), else turned on 2 s into the stream (after the hub refused
/// the pair the stream asked for). The stream loses nothing, the path
/// ends direct (within `within` of direct mode being on) and the hub
/// stops relaying it.
fn stream_across_the_upgrade(on_first: bool, within: Duration) {
    let net = TwoSpokes::up();
    let t = &net.topo;
    if on_first {
        t.direct_on();
    } else {
        assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 5), 5, "the relay works");
    }
    let relayed_at_start = t.relayed();
    // Stopped once the path has been direct for 3 s.
    let max = (within.as_secs() as u32 + 10) * 100;
    let stream = Stream::start(t, &t.ns_a, B_TUNNEL, max);
    let on = Instant::now();
    if !on_first {
        std::thread::sleep(Duration::from_secs(2));
        let before = t.relayed();
        assert!(
            before >= relayed_at_start + 300,
            "the stream went through the relay: {relayed_at_start} → {before}"
        );
        t.direct_on();
    }
    t.wait_for("the stream to go direct", within, || {
        t.path_to(&net.a_socket, B_TUNNEL).as_deref() == Some("direct")
    });
    eprintln!("direct {:?} after direct mode was turned on", on.elapsed());
    std::thread::sleep(Duration::from_secs(4));
    let relayed_then = t.relayed();
    std::thread::sleep(Duration::from_secs(1));
    let relayed_late = t.relayed() - relayed_then;
    let s = stream.stop();
    eprintln!("across the upgrade: {}", loss(&s));
    assert!(s.lost.is_empty(), "across the upgrade: {}", loss(&s));
    assert!(s.sent >= 300, "the stream ran: {s:?}");
    assert!(
        relayed_then > relayed_at_start,
        "the stream began on the relay"
    );
    assert_eq!(
        t.path_to(&net.a_socket, B_TUNNEL).as_deref(),
        Some("direct"),
        "the path ends direct"
    );
    let peer = t
        .peer_of(&net.a_socket, B_TUNNEL)
        .expect("a has b as its peer");
    assert!(peer["upgrades"].as_u64() >= Some(1), "{peer}");
    assert!(peer["tx_packets"].as_u64() >= Some(300), "{peer}");
    // Once direct, the hub carries (almost) none of the stream's 200
    // packets a second: the odd one at the moment of the switch.
    assert!(
        relayed_late <= 5,
        "the hub still relays the direct stream: {relayed_late} in 1 s"
    );
}

#[test]
fn a_stream_loses_nothing_across_the_upgrade() {
    if skip_unless_root("direct_faults::a_stream_loses_nothing_across_the_upgrade") {
        return;
    }
    let _serial = serial();
    stream_across_the_upgrade(true, Duration::from_secs(15));
}

#[test]
fn turning_direct_mode_on_upgrades_a_refused_pair_promptly() {
    if skip_unless_root("direct_faults::turning_direct_mode_on_upgrades_promptly") {
        return;
    }
    let _serial = serial();
    stream_across_the_upgrade(false, Duration::from_secs(15));
}

/// The pair's epoch when hub and spoke a agree on it: the hub's `epoch`
/// (both holders switched), both holders' `current` and a's peer epoch.
fn pair_epoch_settled(net: &TwoSpokes, also_b: bool) -> Option<u64> {
    let t = &net.topo;
    let pairs = t.pair_list();
    let [pair] = pairs.as_slice() else {
        return None;
    };
    let epoch = pair["epoch"].as_u64().filter(|e| *e > 0)?;
    let holders = pair["holders"].as_array()?;
    if holders.len() != 2 || holders.iter().any(|h| h["current"].as_u64() != Some(epoch)) {
        return None;
    }
    let a = t.peer_of(&net.a_socket, B_TUNNEL)?;
    if a["epoch"].as_u64() != Some(epoch) {
        return None;
    }
    if also_b {
        let b = t.peer_of(&net.b_socket, A_TUNNEL)?;
        if b["epoch"].as_u64() != Some(epoch) {
            return None;
        }
    }
    Some(epoch)
}

#[test]
fn a_stream_loses_nothing_across_20_pair_rotations() {
    if skip_unless_root("direct_faults::a_stream_loses_nothing_across_20_pair_rotations") {
        return;
    }
    let _serial = serial();
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    both_direct(&net);
    let mut epoch = 0;
    t.wait_for(
        "the pair's epoch to settle",
        Duration::from_secs(10),
        || {
            pair_epoch_settled(&net, true).is_some_and(|e| {
                epoch = e;
                true
            })
        },
    );
    let first = epoch;
    // 80 s at most; stopped after the rotations.
    let stream = Stream::start(t, &t.ns_a, B_TUNNEL, 8000);
    std::thread::sleep(Duration::from_millis(500));
    let relayed_before = t.relayed();
    let start = Instant::now();
    for i in 1..=20 {
        t.hub_ok(&["key", "rotate", "--spoke", "a"]);
        let want = epoch + 1;
        t.wait_for(
            &format!("pair rotation {i} (epoch {want})"),
            Duration::from_secs(10),
            || {
                pair_epoch_settled(&net, false).is_some_and(|e| {
                    epoch = e;
                    e >= want
                })
            },
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "20 rotations take too long: {i} in {:?}",
            start.elapsed()
        );
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let relayed_during = t.relayed() - relayed_before;
    let s = stream.stop();
    eprintln!(
        "20 rotations in {took:?}, pair epoch {first} → {epoch}; the hub relayed {relayed_during} packets meanwhile; {}",
        loss(&s)
    );
    assert!(s.lost.is_empty(), "across 20 rotations: {}", loss(&s));
    assert!(epoch >= first + 20 && epoch >= 21, "pair epoch {epoch}");
    assert_eq!(
        t.path_to(&net.a_socket, B_TUNNEL).as_deref(),
        Some("direct"),
        "a is still direct"
    );
    assert_eq!(
        t.path_to(&net.b_socket, A_TUNNEL).as_deref(),
        Some("direct"),
        "b is still direct"
    );
    t.wait_for(
        "b to be on the newest epoch",
        Duration::from_secs(10),
        || pair_epoch_settled(&net, true) == Some(epoch),
    );
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
    both_direct(&net);
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
fn direct_traffic_survives_a_killed_hub_and_the_epochs_agree_after() {
    if skip_unless_root(
        "direct_faults::direct_traffic_survives_a_killed_hub_and_the_epochs_agree_after",
    ) {
        return;
    }
    let _serial = serial();
    let mut net = TwoSpokes::up();
    net.direct_on();
    both_direct(&net);
    let mut before = 0;
    net.wait_for(
        "the pair's epoch to settle",
        Duration::from_secs(10),
        || {
            pair_epoch_settled(&net, true).is_some_and(|e| {
                before = e;
                true
            })
        },
    );
    let hub = net.hub.clone();
    net.kill9(&hub);
    // 15 s without a hub: the direct path carries on.
    let t = &net.topo;
    let down = Instant::now();
    let mut rounds = 0;
    while down.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            t.pings(&t.ns_a, B_TUNNEL, 50),
            50,
            "a → b {:?} after the hub died",
            down.elapsed()
        );
        assert_eq!(
            t.pings(&t.ns_b, A_TUNNEL, 50),
            50,
            "b → a {:?} after the hub died",
            down.elapsed()
        );
        rounds += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(rounds >= 3, "{rounds} rounds");
    assert_eq!(
        t.path_to(&net.a_socket, B_TUNNEL).as_deref(),
        Some("direct"),
        "a stays direct without the hub"
    );
    assert_eq!(
        t.path_to(&net.b_socket, A_TUNNEL).as_deref(),
        Some("direct"),
        "b stays direct without the hub"
    );

    net.restart_hub();
    let back = Instant::now();
    let mut agreed = 0;
    net.wait_for(
        "hub, a and b to agree on the pair's epoch",
        Duration::from_secs(20),
        || {
            // Traffic keeps the pair in use.
            net.ping(&net.ns_a, B_TUNNEL, 1);
            pair_epoch_settled(&net, true).is_some_and(|e| {
                agreed = e;
                true
            })
        },
    );
    eprintln!(
        "pair epoch {before} before the kill, {agreed} agreed {:?} after the restart",
        back.elapsed()
    );
    assert!(agreed >= before, "the epoch went back: {before} → {agreed}");
    let t = &net.topo;
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    assert_eq!(t.pings(&t.ns_b, A_TUNNEL, 20), 20);
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
    both_direct(&net);
    let before = t.relayed();
    let bytes = BYTES.to_string();
    let dst = format!("{B_TUNNEL}:9100");
    let mut sent = Value::Null;
    let start = Instant::now();
    let received = t.with_sink(&t.ns_b, &["tcp-sink", "9100"], || {
        sent = t.nettool(&t.ns_a, &["tcp-source", &dst, &bytes]);
    });
    let took = start.elapsed();
    let after = t.relayed();
    eprintln!(
        "50 MB direct in {took:?}; the hub relayed {} packets meanwhile",
        after - before
    );
    assert_eq!(sent["bytes"].as_u64(), Some(BYTES), "source: {sent}");
    assert_eq!(
        received["bytes"].as_u64(),
        Some(BYTES),
        "sink got {received}, source sent {sent}"
    );
    assert_eq!(
        received["sha256"], sent["sha256"],
        "the data was altered in transit"
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
