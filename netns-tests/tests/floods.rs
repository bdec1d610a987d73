//! Floods at the hub's data port: WireGuard handshake initiations that pass
//! the first check (a valid MAC1) from keys the hub never enrolled. The hub
//! must answer with cookie replies instead of doing Diffie-Hellman, keep
//! relaying for its spokes, and still let spokes (re)connect through the
//! cookie exchange, as WireGuard specifies. Skipped unless root.

use std::time::{Duration, Instant};

use tasuki_netns_tests::{binaries, skip_unless_root, TwoSpokes, B_TUNNEL, HUB_LAN};

#[test]
fn a_handshake_flood_gets_cookies_while_spokes_keep_working() {
    if skip_unless_root("a_handshake_flood_gets_cookies_while_spokes_keep_working") {
        return;
    }
    let mut net = TwoSpokes::up();
    assert!(
        net.ping(&net.ns_a, B_TUNNEL, 2),
        "spoke a cannot ping spoke b"
    );
    // The flood needs only what every invitation shows: the hub's public key.
    let invitation = net.invite("never-used", true);
    // Many source addresses (a botnet), so that the per-address budget lets
    // enough through to put the hub under load, where cookies are demanded.
    let sources: Vec<String> = (10..50).map(|i| format!("192.168.77.{i}")).collect();
    for src in &sources {
        net.exec_ok(
            &net.ns_lan,
            &["ip", "addr", "add", &format!("{src}/24"), "dev", "eth0"],
        );
    }
    let sources = sources.join(",");
    let flood_log = net.dir().join("flood.log");
    let target = format!("{HUB_LAN}:51820");
    let nettool = binaries().nettool.to_string_lossy().into_owned();
    let seconds = 25;
    let flood = net.spawn(
        &net.ns_lan,
        &[
            nettool.as_str(),
            "handshake-flood",
            &target,
            &invitation,
            &seconds.to_string(),
            &sources,
        ],
        &flood_log,
    );
    let started = Instant::now();
    net.wait_for(
        "the hub to answer the flood with cookies",
        Duration::from_secs(10),
        || net.hub_status().counters.cookies > 0,
    );

    // Established sessions carry on: data packets are not rate-limited.
    assert!(
        net.ping(&net.ns_a, B_TUNNEL, 3),
        "spoke a lost spoke b during the flood"
    );
    // A spoke that restarts must handshake under load: it gets a cookie,
    // retries with MAC2, and is answered.
    net.kill9(&net.b);
    net.restart_b();
    net.wait_for(
        "restarted spoke b to come back during the flood",
        Duration::from_secs(40),
        || {
            net.must_be_alive(&net.hub);
            net.ping(&net.ns_a, B_TUNNEL, 1)
        },
    );
    assert!(
        started.elapsed() < Duration::from_secs(seconds),
        "the flood ended before spoke b came back: the test proved nothing; {}",
        net.log_tails()
    );
    // The control plane still enrols while the data port is flooded.
    let inv = net.invite("c", true);
    net.enrol_ok(&net.ns_b, &inv, &net.spoke_dir("c"));

    net.wait_for("the flood to end", Duration::from_secs(40), || {
        !net.is_alive(&flood)
    });
    let report = std::fs::read_to_string(&flood_log).unwrap_or_default();
    let line = report
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| net.fail(&format!("no report from the flood: {report}")));
    let result: serde_json::Value = serde_json::from_str(line).expect("flood report is JSON");
    let sent = result["sent"].as_u64().unwrap_or(0);
    let cookies = result["cookie_replies"].as_u64().unwrap_or(0);
    assert!(
        sent > 10_000,
        "the flood was too weak to prove anything: {result}"
    );
    assert!(cookies > 0, "the flooder saw no cookie reply: {result}");
    assert_eq!(
        result["other_replies"].as_u64(),
        Some(0),
        "the hub answered an unknown key with something other than a cookie: {result}"
    );
    let status = net.hub_status();
    assert!(
        status
            .counters
            .dropped
            .get("rate_limited")
            .copied()
            .unwrap_or(0)
            > 0,
        "no initiation was over its address's budget: {:?}",
        status.counters
    );
    assert!(
        status.counters.handshakes < 100,
        "the hub completed handshakes for flood keys: {:?}",
        status.counters
    );
    net.must_be_alive(&net.hub);
}
