//! Keyed groups' multicast (issue 15) with the real binaries: a member's
//! numbered stream into the group's range reaches every other member
//! exactly once and an outsider never; a member taken out mid-stream
//! stops getting it while the others lose nothing; members on a direct
//! path get it straight; an mDNS query is answered by another member's
//! responder across the tunnel. Skipped unless root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    metric_sample, skip_unless_root, Mapping, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL,
};

/// Where the hub serves its metrics in these tests.
const METRICS: &str = "127.0.0.1:9586";
/// The group's range and the address the streams go to.
const RANGE: &str = "239.77.1.0/24";
const GROUP_ADDR: &str = "239.77.1.9";
const PORT: &str = "5000";

/// A listener in a namespace: where it runs and its own tunnel address.
struct Listener<'a> {
    ns: &'a str,
    addr: String,
}

/// The tunnel address of the spoke behind `socket` (no prefix length).
fn tunnel_addr(t: &Topology, socket: &Path) -> String {
    let status = t.spoke_status_json(socket);
    let addr = status["tunnel_addr"].as_str().unwrap_or_default();
    addr.split('/').next().unwrap_or_default().to_owned()
}

/// Runs `mcast-recv` in each listener's namespace for `seconds`, runs
/// `send` once all listen, and returns what each received, in order.
fn receive_while(
    t: &Topology,
    listeners: &[Listener<'_>],
    seconds: u64,
    send: impl FnOnce(),
) -> Vec<Vec<u64>> {
    let secs = seconds.to_string();
    let ready: Vec<PathBuf> = (0..listeners.len())
        .map(|i| t.dir().join(format!("ready-mcast-{i}-{}", rand_suffix())))
        .collect();
    std::thread::scope(|s| {
        let sinks: Vec<_> = listeners
            .iter()
            .zip(&ready)
            .map(|(l, r)| {
                let r = r.to_string_lossy().into_owned();
                let secs = secs.clone();
                s.spawn(move || {
                    t.nettool(
                        l.ns,
                        &[
                            "mcast-recv",
                            GROUP_ADDR,
                            PORT,
                            &l.addr,
                            &secs,
                            "--ready",
                            &r,
                        ],
                    )
                })
            })
            .collect();
        t.wait_for("the listeners to join", Duration::from_secs(10), || {
            ready.iter().all(|r| r.exists())
        });
        send();
        sinks
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => numbers(&v),
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn numbers(v: &Value) -> Vec<u64> {
    v["received"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Sends `count` numbered datagrams from `ns` (tunnel address `from`) at `pps`.
fn send(t: &Topology, ns: &str, from: &str, count: u32, pps: u32) {
    let out = t.nettool(
        ns,
        &[
            "mcast-send",
            GROUP_ADDR,
            PORT,
            from,
            &count.to_string(),
            &pps.to_string(),
        ],
    );
    assert_eq!(out["sent"], count, "{out}");
}

/// Whether namespace `ns` routes `range` into its tunnel (the spoke was
/// told the group's multicast).
fn routed(t: &Topology, ns: &str, range: &str) -> bool {
    let out = t.exec(ns, &["ip", "route", "show", range]);
    String::from_utf8_lossy(&out.stdout).contains("dev")
}

#[test]
fn a_members_multicast_reaches_every_other_member_once_and_a_leaver_stops() {
    if skip_unless_root("group_multicast::reaches_every_other_member_once") {
        return;
    }
    let (mut net, ()) = TwoSpokes::up_with_hub_args(|_| (), &["--metrics", METRICS]);
    let c = net.topo.spoke_behind("c", 0, Mapping::EndpointIndependent);
    let outsider = net
        .topo
        .spoke_behind("outsider", 1, Mapping::EndpointIndependent);
    let t = &net.topo;
    t.hub_ok(&["group", "add", "staff"]);
    t.hub_ok(&[
        "group",
        "add-member",
        "staff",
        "spoke:a",
        "spoke:b",
        "spoke:c",
    ]);
    // Multicast needs the group's key first.
    let refused = t.hub_cli(&["group", "multicast", "staff", RANGE]);
    assert!(!refused.status.success(), "multicast on an unkeyed group");
    t.hub_ok(&["group", "key", "staff", "on"]);
    let said = t.hub_ok(&[
        "group",
        "multicast",
        "staff",
        RANGE,
        "224.0.0.251/32",
        "--rate",
        "1000",
    ]);
    assert!(said.contains(RANGE), "{said}");
    let bad = t.hub_cli(&["group", "multicast", "staff", "10.1.0.0/16"]);
    assert!(!bad.status.success(), "a unicast range was taken");
    for ns in [&t.ns_a, &t.ns_b, &c.ns] {
        t.wait_for(
            "the members route the range",
            Duration::from_secs(30),
            || routed(t, ns, RANGE),
        );
    }
    assert!(
        !routed(t, &outsider.ns, RANGE),
        "the outsider routes the group's range"
    );
    let c_addr = tunnel_addr(t, &c.socket);
    let out_addr = tunnel_addr(t, &outsider.socket);
    let listeners = [
        Listener {
            ns: &t.ns_b,
            addr: B_TUNNEL.into(),
        },
        Listener {
            ns: &c.ns,
            addr: c_addr.clone(),
        },
        Listener {
            ns: &outsider.ns,
            addr: out_addr.clone(),
        },
    ];
    let got = receive_while(t, &listeners, 6, || send(t, &t.ns_a, A_TUNNEL, 300, 100));
    let all: Vec<u64> = (0..300).collect();
    assert_eq!(got[0], all, "b: every datagram once, in order");
    assert_eq!(got[1], all, "c: every datagram once, in order");
    assert!(
        got[2].is_empty(),
        "the outsider got {} datagrams",
        got[2].len()
    );
    let m = t.hub_metrics(METRICS);
    assert!(
        metric_sample(&m, "tasuki_multicast_delivered_total") >= 600,
        "{m}"
    );
    // Datagrams larger than the tunnel: the route's MTU leaves room for
    // the envelope, the kernel fragments, every member gets them whole.
    let route = String::from_utf8_lossy(&t.exec(&t.ns_a, &["ip", "route", "show", RANGE]).stdout)
        .into_owned();
    assert!(route.contains("mtu"), "{route}");
    let big = receive_while(t, &listeners[..2], 4, || {
        let out = t.nettool(
            &t.ns_a,
            &["mcast-send", GROUP_ADDR, PORT, A_TUNNEL, "20", "20", "3000"],
        );
        assert_eq!(out["sent"], 20, "{out}");
    });
    for got in &big {
        assert_eq!(got, &(0..20).collect::<Vec<_>>(), "3000-byte datagrams");
    }
    // The outsider's own packets into the range go nowhere.
    let before = t.hub_metrics(METRICS);
    let got = receive_while(t, &listeners[..2], 3, || {
        send(t, &outsider.ns, &out_addr, 20, 50)
    });
    assert!(
        got.iter().all(Vec::is_empty),
        "the outsider reached members: {got:?}"
    );
    assert_eq!(
        metric_sample(&t.hub_metrics(METRICS), "tasuki_multicast_delivered_total"),
        metric_sample(&before, "tasuki_multicast_delivered_total")
    );
    let status = t.spoke_status_json(&outsider.socket);
    assert!(
        status["counters"]["dropped"]["multicast_no_group"]
            .as_u64()
            .unwrap_or(0)
            >= 20,
        "{status}"
    );

    // mDNS: b asks for a's name; a's responder answers across the tunnel.
    let answer = t.with_sink(
        &t.ns_a,
        &["mdns-respond", "printer.local", A_TUNNEL, "8"],
        || {
            let q = t.nettool(&t.ns_b, &["mdns-query", "printer.local", B_TUNNEL, "6"]);
            assert_eq!(q["answer"], A_TUNNEL, "{q}");
        },
    );
    assert!(answer["answered"].as_u64().unwrap_or(0) >= 1, "{answer}");

    // c is taken out mid-stream: it stops getting the stream, b loses nothing.
    let got = receive_while(t, &listeners[..2], 9, || {
        std::thread::scope(|s| {
            let stream = s.spawn(|| send(t, &t.ns_a, A_TUNNEL, 600, 100));
            std::thread::sleep(Duration::from_secs(2));
            t.hub_ok(&["group", "remove-member", "staff", "spoke:c"]);
            if let Err(p) = stream.join() {
                std::panic::resume_unwind(p);
            }
        })
    });
    let all: Vec<u64> = (0..600).collect();
    assert_eq!(
        got[0], all,
        "b lost or repeated datagrams across c's leaving and the rotation"
    );
    let c_got = &got[1];
    assert!(!c_got.is_empty(), "c got nothing before it was taken out");
    let last = c_got.iter().max().copied().unwrap_or(0);
    assert!(
        last < 450,
        "c kept receiving until {last} of 600 after it was taken out"
    );
    assert_eq!(
        c_got,
        &(0..=last).collect::<Vec<_>>(),
        "c: a prefix of the stream, once each"
    );
    t.wait_for("c unroutes the range", Duration::from_secs(10), || {
        !routed(t, &c.ns, RANGE)
    });
    let list = t.hub_ok(&["group", "list"]);
    assert!(
        list.contains("multicast: 239.77.1.0/24 224.0.0.251/32"),
        "{list}"
    );
    let audit = t.hub_ok(&["audit"]);
    assert!(audit.contains("group staff multicast"), "{audit}");
}

#[test]
fn members_on_a_direct_path_get_the_groups_multicast_straight() {
    if skip_unless_root("group_multicast::members_on_a_direct_path") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.hub_ok(&["group", "add", "staff"]);
    t.hub_ok(&["group", "add-member", "staff", "spoke:a", "spoke:b"]);
    t.hub_ok(&["group", "key", "staff", "on"]);
    t.hub_ok(&["group", "multicast", "staff", RANGE]);
    for ns in [&t.ns_a, &t.ns_b] {
        t.wait_for(
            "the members route the range",
            Duration::from_secs(30),
            || routed(t, ns, RANGE),
        );
    }
    t.direct_on();
    net.both_direct();
    let hub_copies = || {
        t.hub_status_json()["counters"]["multicast"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = hub_copies();
    let listeners = [Listener {
        ns: &t.ns_b,
        addr: B_TUNNEL.into(),
    }];
    let got = receive_while(t, &listeners, 4, || send(t, &t.ns_a, A_TUNNEL, 100, 100));
    assert_eq!(
        got[0],
        (0..100).collect::<Vec<_>>(),
        "b: every datagram once"
    );
    assert_eq!(hub_copies(), before, "the hub copied what went straight");
    let status = t.spoke_status_json(&net.a_socket);
    assert!(
        status["counters"]["multicast"].as_u64().unwrap_or(0) >= 100,
        "{status}"
    );
}
