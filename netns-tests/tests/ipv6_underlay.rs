//! An IPv6-only underlay (issue 19): the WAN has no IPv4 address at all,
//! the invitation names the hub as `[fd30::1]:51820`, and both families
//! cross the tunnels: IPv4 and IPv6 pings hub, spoke to spoke and to a
//! LAN host behind the hub (an IPv6 LAN routed with `--route`), and a TCP
//! transfer over IPv6 arrives intact. Skipped unless root.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    skip_unless_root, NetnsEtcFiles, Topology, A_TUNNEL6, B_TUNNEL, B_TUNNEL6, HUB_TUNNEL,
    HUB_TUNNEL6, LAN_HOST, LAN_NET, TUNNEL_NET, TUNNEL_NET6,
};

const HUB_WAN6: &str = "fd30::1";
const LAN_NET6: &str = "fd50:77::/64";
const LAN_HOST6: &str = "fd50:77::2";

/// `tasuki-hub init` naming the hub `hub.tasuki.test` (see
/// [`hosts_naming_the_hub`]), with both tunnel networks.
fn init_named_hub(t: &Topology) {
    t.hub_init_with(
        "hub.tasuki.test:51820",
        &[
            "--tunnel-net",
            TUNNEL_NET,
            "--tunnel-net",
            TUNNEL_NET6,
            "--route",
            LAN_NET,
        ],
    );
}

/// Gives `dev` in `ns` IPv6 address `addr` (no duplicate detection: the
/// test's addresses are its own).
fn add6(t: &Topology, ns: &str, addr: &str, dev: &str) {
    t.exec_ok(ns, &["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
}

/// The WAN renumbered to IPv6 only, and an IPv6 LAN beside the IPv4 one.
fn renumber(t: &Topology) {
    for (ns, addr) in [
        (&t.ns_hub, "fd30::1/64"),
        (&t.ns_a, "fd30::11/64"),
        (&t.ns_b, "fd30::12/64"),
    ] {
        t.exec_ok(ns, &["ip", "-4", "addr", "flush", "dev", "eth0"]);
        add6(t, ns, addr, "eth0");
    }
    add6(t, &t.ns_hub, "fd50:77::1/64", "lan0");
    add6(t, &t.ns_lan, "fd50:77::2/64", "eth0");
    t.exec_ok(
        &t.ns_lan,
        &["ip", "-6", "route", "add", TUNNEL_NET6, "via", "fd50:77::1"],
    );
    t.exec_ok(
        &t.ns_hub,
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    );
}

/// UDP datagrams sent from `from_ns` to `dst:port` that arrived in `to_ns`.
fn udp_through(t: &Topology, from_ns: &str, to_ns: &str, dst: &str, port: &str) -> u64 {
    let got = t.with_sink(to_ns, &["udp-sink", port, "2"], || {
        t.nettool(from_ns, &["udp-send", dst, port, "5"]);
    });
    got["received"].as_u64().unwrap_or(0)
}

/// The access policy decides IPv6 by prefix and port: a's datagrams to
/// one port of the IPv6 LAN pass, to another not; `hub` answers pings at
/// its IPv6 address; nothing else passes.
fn enforce_by_ipv6_prefix_and_port(t: &Topology) {
    for rule in [
        [
            "--from",
            "spoke:a",
            "--to",
            LAN_NET6,
            "--service",
            "udp/9108",
        ],
        ["--from", "*", "--to", "hub", "--service", "icmp"],
    ] {
        let mut args = vec!["access", "allow"];
        args.extend_from_slice(&rule);
        t.hub_ok(&args);
    }
    let mixed = t.hub_cli(&[
        "access",
        "allow",
        "--from",
        "10.77.0.0/24",
        "--to",
        LAN_NET6,
    ]);
    assert!(
        !mixed.status.success(),
        "a rule from IPv4 to IPv6 was taken"
    );
    t.hub_ok(&["access", "mode", "enforce"]);
    let check: Value = serde_json::from_str(&t.hub_ok(&[
        "access",
        "check",
        "--from",
        "spoke:a",
        "--to",
        LAN_HOST6,
        "--service",
        "udp/9108",
        "--json",
    ]))
    .expect("json");
    assert_eq!(check["allowed"], true, "{check}");
    assert_eq!(udp_through(t, &t.ns_a, &t.ns_lan, LAN_HOST6, "9108"), 5);
    assert_eq!(
        udp_through(t, &t.ns_a, &t.ns_lan, LAN_HOST6, "9109"),
        0,
        "a port no rule allows"
    );
    assert!(
        t.ping(&t.ns_a, HUB_TUNNEL6, 2),
        "the hub's IPv6 address is `hub`"
    );
    assert!(
        !t.ping(&t.ns_a, LAN_HOST6, 2),
        "ICMPv6 to the LAN is allowed by no rule"
    );
    assert!(!t.ping(&t.ns_a, B_TUNNEL6, 2), "a reached b over IPv6");
    let dropped = t.hub_dropped("denied");
    assert!(dropped > 0, "denials are counted: {dropped}");
}

#[test]
fn an_ipv6_only_underlay_carries_both_families() {
    if skip_unless_root("ipv6_underlay::an_ipv6_only_underlay") {
        return;
    }
    let t = Topology::new();
    renumber(&t);
    let endpoint = format!("[{HUB_WAN6}]:51820");
    t.hub_init_with(
        &endpoint,
        &[
            "--tunnel-net",
            TUNNEL_NET,
            "--tunnel-net",
            TUNNEL_NET6,
            "--route",
            LAN_NET,
            "--route",
            LAN_NET6,
        ],
    );
    let hub = t.start_hub();
    let spokes = t.enrol_and_start(
        &[("a", &t.ns_a), ("b", &t.ns_b)],
        &["--pre-approved", "--service"],
    );
    for ns in [&t.ns_a, &t.ns_b] {
        t.wait_for("a spoke to ping the hub", Duration::from_secs(30), || {
            t.must_be_alive(&hub);
            t.ping(ns, HUB_TUNNEL, 1)
        });
    }
    for (what, addr) in [
        ("the hub over IPv6", HUB_TUNNEL6),
        ("b over IPv4", B_TUNNEL),
        ("b over IPv6", B_TUNNEL6),
        ("the IPv4 LAN host", LAN_HOST),
        ("the IPv6 LAN host", LAN_HOST6),
    ] {
        assert!(t.ping(&t.ns_a, addr, 3), "a cannot ping {what} ({addr})");
    }
    assert!(
        t.ping(&t.ns_lan, A_TUNNEL6, 3),
        "the IPv6 LAN host cannot ping a"
    );
    // A LAN host's packet too big for the tunnel: the hub's kernel says so
    // (Packet Too Big, with the tunnel's MTU), no black hole.
    let big = t.exec(
        &t.ns_lan,
        &[
            "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1452", A_TUNNEL6,
        ],
    );
    let said = tasuki_netns_tests::output_text(&big);
    assert!(
        said.contains("mtu=1420") || said.contains("mtu = 1420"),
        "{said}"
    );
    // The hub sees the spokes at their IPv6 WAN addresses.
    let list: Value = serde_json::from_str(&t.hub_ok(&["spoke", "list", "--json"])).expect("json");
    let endpoints: Vec<(String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let at = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (at("name"), at("endpoint"))
        })
        .collect();
    for (name, wan) in [("a", "[fd30::11]:"), ("b", "[fd30::12]:")] {
        assert!(
            endpoints
                .iter()
                .any(|(n, e)| n == name && e.starts_with(wan)),
            "{name} not seen at {wan}: {endpoints:?}"
        );
    }
    // TCP over IPv6 inside, IPv6 outside, checksummed end to end.
    let dst = format!("[{B_TUNNEL6}]:9107");
    t.tcp_transfer_intact(&t.ns_a, &t.ns_b, &dst, 20 * 1024 * 1024);
    enforce_by_ipv6_prefix_and_port(&t);
    t.must_be_alive(&hub);
    for s in &spokes {
        t.must_be_alive(s);
    }
}

/// A spoke on a machine with IPv6 turned off runs, carrying IPv4 only
/// (its TUN takes no IPv6 address), beside a spoke that carries both.
#[test]
fn a_spoke_with_ipv6_turned_off_carries_ipv4() {
    if skip_unless_root("ipv6_underlay::a_spoke_with_ipv6_turned_off") {
        return;
    }
    let t = Topology::new();
    for key in ["all", "default"] {
        t.exec_ok(
            &t.ns_a,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ],
        );
    }
    t.hub_init();
    let hub = t.start_hub();
    let spokes = t.enrol_and_start(
        &[("a", &t.ns_a), ("b", &t.ns_b)],
        &["--pre-approved", "--service"],
    );
    t.wait_for("a to ping b over IPv4", Duration::from_secs(30), || {
        t.must_be_alive(&hub);
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });
    let a = t.spoke_status_json(&t.spoke_socket("a"));
    assert!(a["tunnel_addr6"].is_null(), "a claims IPv6: {a}");
    let b = t.spoke_status_json(&t.spoke_socket("b"));
    assert_eq!(b["tunnel_addr6"], format!("{B_TUNNEL6}/64"), "{b}");
    assert!(
        t.ping(&t.ns_b, HUB_TUNNEL6, 2),
        "b cannot ping the hub over IPv6"
    );
    for s in &spokes {
        t.must_be_alive(s);
    }
}

/// Hosts files in each of `namespaces` where `hub.tasuki.test` has the
/// hub's IPv4 and IPv6 WAN addresses, IPv4 first.
fn hosts_naming_the_hub(namespaces: &[&str]) -> NetnsEtcFiles {
    let mut files = NetnsEtcFiles::default();
    for ns in namespaces {
        files.write(
            ns,
            "hosts",
            "127.0.0.1 localhost\n172.30.0.1 hub.tasuki.test\nfd30::1 hub.tasuki.test\n",
        );
    }
    files
}

/// A spoke that moves from an IPv4 network to an IPv6 one finds its hub
/// again by name (A and AAAA records, from the namespace's hosts file) and
/// keeps its TCP connection through the tunnel.
#[test]
fn a_spoke_roams_from_ipv4_to_ipv6_and_keeps_its_tcp_connection() {
    if skip_unless_root("ipv6_underlay::a_spoke_roams_from_ipv4_to_ipv6") {
        return;
    }
    let t = Topology::new();
    add6(&t, &t.ns_hub, "fd30::1/64", "eth0");
    let hosts = hosts_naming_the_hub(&[&t.ns_a, &t.ns_b]);
    init_named_hub(&t);
    let hub = t.start_hub();
    let spokes = t.enrol_and_start(
        &[("a", &t.ns_a), ("b", &t.ns_b)],
        &["--pre-approved", "--service"],
    );
    t.wait_for("a to ping b", Duration::from_secs(30), || {
        t.must_be_alive(&hub);
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });
    let seen = |wan: &str| {
        let list: Value =
            serde_json::from_str(&t.hub_ok(&["spoke", "list", "--json"])).unwrap_or_default();
        list.as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "a" && s["endpoint"].as_str().is_some_and(|e| e.starts_with(wan)))
    };
    assert!(seen("172.30.0.11:"), "a is not seen on IPv4 first");
    let server = t.spawn(
        &t.ns_b,
        &["iperf3", "-s", "-1", "-p", "5209"],
        &t.dir().join("iperf3-server.log"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let client = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            t.exec(
                &t.ns_a,
                &[
                    "iperf3", "-c", B_TUNNEL, "-p", "5209", "-t", "12", "-b", "4M", "-J",
                ],
            )
        });
        std::thread::sleep(Duration::from_secs(3));
        // a moves: an IPv6 address comes, its IPv4 one goes.
        add6(&t, &t.ns_a, "fd30::11/64", "eth0");
        t.exec_ok(&t.ns_a, &["ip", "-4", "addr", "flush", "dev", "eth0"]);
        t.wait_for(
            "the hub to see a at fd30::11",
            Duration::from_secs(20),
            || seen("[fd30::11]:"),
        );
        client.join().expect("the iperf3 client thread")
    });
    let report: Value = serde_json::from_slice(&client.stdout).unwrap_or_default();
    assert!(
        client.status.success() && report["error"].is_null(),
        "the TCP connection did not survive the move: {}",
        tasuki_netns_tests::output_text(&client)
    );
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 2_000_000, "only {received} bytes arrived");
    drop(server);
    for s in &spokes {
        t.must_be_alive(s);
    }
    drop(hosts);
}

/// The hub's name resolves to IPv4 first, but its IPv4 address drops
/// everything from spoke a: a enrols and attaches over IPv6 a moment
/// later (happy eyeballs) instead of waiting out its timeout.
#[test]
fn a_hub_black_holed_on_ipv4_is_reached_over_ipv6() {
    if skip_unless_root("ipv6_underlay::a_hub_black_holed_on_ipv4") {
        return;
    }
    let t = Topology::new();
    add6(&t, &t.ns_hub, "fd30::1/64", "eth0");
    add6(&t, &t.ns_a, "fd30::11/64", "eth0");
    let hosts = hosts_naming_the_hub(&[&t.ns_a]);
    for cmd in [
        "add table inet blackhole",
        "add chain inet blackhole in { type filter hook input priority 0 ; }",
        "add rule inet blackhole in ip saddr 172.30.0.11 drop",
    ] {
        t.exec_ok(&t.ns_hub, &["nft", cmd]);
    }
    init_named_hub(&t);
    let hub = t.start_hub();
    let inv = t.invite_with("a", &["--pre-approved", "--service"]);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("a"));
    let a = t.start_spoke(&t.ns_a, &t.spoke_dir("a"), &t.spoke_socket("a"));
    t.wait_for("a to ping the hub", Duration::from_secs(30), || {
        t.must_be_alive(&a);
        t.ping(&t.ns_a, HUB_TUNNEL, 1)
    });
    let list: Value = serde_json::from_str(&t.hub_ok(&["spoke", "list", "--json"])).expect("json");
    let a_at = list[0]["endpoint"].as_str().unwrap_or_default().to_owned();
    assert!(a_at.starts_with("[fd30::11]:"), "a seen at {a_at}");
    t.must_be_alive(&hub);
    drop(hosts);
}
