//! Direct mode (issue 14) loses nothing, with the real binaries: a 100
//! packets/s stream across the upgrade (also when direct mode is turned on
//! under it), across 20 pair-epoch rotations, and while the hub is killed.
//! Skipped unless root.
//!
//! The tests of this file take a lock and run one at a time: losing no
//! packet of a 100 pps stream is a timing claim, and another test in a
//! parallel thread on a small machine would make it a claim about the
//! machine instead.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tasuki_netns_tests::{loss, skip_unless_root, Stream, TwoSpokes, A_TUNNEL, B_TUNNEL};

/// One test of this file at a time (see the module's documentation).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
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
        // At least 50 requests and their replies (a loaded machine sends
        // fewer than 100 a second: this says which path, not how fast).
        assert!(
            before >= relayed_at_start + 100,
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

#[test]
fn a_stream_loses_nothing_across_20_pair_rotations() {
    if skip_unless_root("direct_faults::a_stream_loses_nothing_across_20_pair_rotations") {
        return;
    }
    let _serial = serial();
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    net.both_direct();
    let mut epoch = 0;
    t.wait_for(
        "the pair's epoch to settle",
        Duration::from_secs(10),
        || {
            net.pair_epoch_settled(true).is_some_and(|e| {
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
                net.pair_epoch_settled(false).is_some_and(|e| {
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
        || net.pair_epoch_settled(true) == Some(epoch),
    );
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
    net.both_direct();
    let mut before = 0;
    net.wait_for(
        "the pair's epoch to settle",
        Duration::from_secs(10),
        || {
            net.pair_epoch_settled(true).is_some_and(|e| {
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
            net.pair_epoch_settled(true).is_some_and(|e| {
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
