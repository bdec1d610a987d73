//! The access policy with the real daemons: rules by spoke, group, user and
//! address, ports, replies to allowed flows, group membership changes, the
//! login as the key to a user's rules, and the policy across a restart.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    output_text, skip_unless_root, spoke_stdin, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL,
    HUB_TUNNEL, LAN_HOST,
};

/// `tasuki-hub access show --json`, parsed.
fn access_json(t: &Topology) -> Value {
    serde_json::from_str(&t.hub_ok(&["access", "show", "--json"]))
        .unwrap_or_else(|e| t.fail(&format!("access show --json is no JSON: {e}")))
}

/// The epoch carrying `spoke`'s traffic, per `tasuki-hub key status`.
fn key_epoch(t: &Topology, spoke: &str) -> u64 {
    let v: Value =
        serde_json::from_str(&t.hub_ok(&["key", "status", "--json"])).unwrap_or(Value::Null);
    v.as_array()
        .and_then(|links| links.iter().find(|l| l["spoke"] == spoke))
        .and_then(|l| l["epoch"].as_u64())
        .unwrap_or(0)
}

/// UDP datagrams sent from `from_ns` to `dst:port` that arrived there.
fn udp_through(t: &Topology, from_ns: &str, to_ns: &str, dst: &str, port: &str) -> u64 {
    let got = t.with_sink(to_ns, &["udp-sink", port, "2"], || {
        t.nettool(from_ns, &["udp-send", dst, port, "5"]);
    });
    got["received"].as_u64().unwrap_or(0)
}

#[test]
fn enforce_mode_passes_what_rules_allow_and_their_replies() {
    if skip_unless_root("enforce_mode_passes_what_rules_allow_and_their_replies") {
        return;
    }
    let mut net = TwoSpokes::up();
    // A new hub is open: everything routable passes, no rule exists.
    let v = access_json(&net);
    assert_eq!(v["mode"], "open", "{v}");
    assert_eq!(v["rules"], serde_json::json!([]), "{v}");
    assert!(net.ping(&net.ns_a, B_TUNNEL, 2));

    // Bad input is refused with a reason, and nothing changes.
    let bad = net.hub_cli(&["access", "allow", "--from", "group:nope", "--to", "*"]);
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("no group named"),
        "{}",
        output_text(&bad)
    );
    let bad = net.hub_cli(&["access", "allow", "--from", "*", "--to", "10.1.2.3/40"]);
    assert!(!bad.status.success(), "{}", output_text(&bad));
    assert_eq!(access_json(&net)["rules"], serde_json::json!([]));

    net.hub_ok(&["group", "add", "servers"]);
    net.hub_ok(&["group", "add-member", "servers", "spoke:b"]);
    let rules: [&[&str]; 3] = [
        &[
            "--from",
            "spoke:a",
            "--to",
            "group:servers",
            "--service",
            "udp/5353",
        ],
        &[
            "--from",
            "spoke:a",
            "--to",
            "192.168.77.0/24",
            "--service",
            "tcp/8080",
        ],
        &["--from", "*", "--to", "hub", "--service", "icmp"],
    ];
    for rule in rules {
        let mut args = vec!["access", "allow"];
        args.extend_from_slice(rule);
        net.hub_ok(&args);
    }
    let out = net.hub_ok(&["access", "mode", "enforce"]);
    assert!(out.contains("enforce"), "{out}");

    // An admin can ask what would pass, and which rule lets it.
    let check = |from: &str, to: &str, service: &str| -> Value {
        let out = net.hub_ok(&[
            "access",
            "check",
            "--from",
            from,
            "--to",
            to,
            "--service",
            service,
            "--json",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let v = check("spoke:a", B_TUNNEL, "udp/5353");
    assert_eq!(
        (v["allowed"].clone(), v["rules"].clone()),
        (Value::Bool(true), serde_json::json!([1])),
        "{v}"
    );
    let v = check(A_TUNNEL, B_TUNNEL, "udp/5354");
    assert_eq!(v["allowed"], false, "{v}");
    let v = check(LAN_HOST, A_TUNNEL, "icmp");
    assert_eq!(v["allowed"], false, "{v}");
    let bad = net.hub_cli(&[
        "access",
        "check",
        "--from",
        "spoke:zz",
        "--to",
        B_TUNNEL,
        "--service",
        "icmp",
    ]);
    assert!(
        output_text(&bad).contains("no spoke named"),
        "{}",
        output_text(&bad)
    );

    // Everyone may ping the hub, and the echo replies come back.
    net.wait_for(
        "spoke a to ping the hub under the rules",
        Duration::from_secs(10),
        || net.ping(&net.ns_a, HUB_TUNNEL, 1),
    );
    assert!(
        net.ping(&net.ns_b, HUB_TUNNEL, 2),
        "spoke b cannot ping the hub"
    );
    // No rule lets a ping b, or b ping a, or the LAN reach a spoke.
    let denied_before = net.hub_dropped("denied");
    assert!(
        !net.ping(&net.ns_a, B_TUNNEL, 2),
        "a pinged b with no rule for it"
    );
    assert!(
        !net.ping(&net.ns_b, A_TUNNEL, 2),
        "b pinged a with no rule for it"
    );
    assert!(
        !net.ping(&net.ns_lan, A_TUNNEL, 2),
        "the LAN pinged a with no rule for it"
    );
    assert!(
        net.hub_dropped("denied") > denied_before,
        "the hub did not count its refusals: {}",
        net.hub_status_json()
    );
    // a may send to b's port 5353 (b is in `servers`), not to 5354.
    assert_eq!(udp_through(&net, &net.ns_a, &net.ns_b, B_TUNNEL, "5353"), 5);
    assert_eq!(udp_through(&net, &net.ns_a, &net.ns_b, B_TUNNEL, "5354"), 0);
    // b is not a: the rule is a's alone.
    assert_eq!(udp_through(&net, &net.ns_b, &net.ns_a, A_TUNNEL, "5353"), 0);
    // A TCP connection a → LAN:8080 works both ways (the replies answer an
    // allowed flow); the same to port 8081 does not connect.
    let dst = format!("{LAN_HOST}:8080");
    let mut sent = Value::Null;
    let got = net.with_sink(&net.ns_lan, &["tcp-sink", "8080"], || {
        sent = net.nettool(&net.ns_a, &["tcp-source", &dst, "2000000"]);
    });
    assert_eq!(got["bytes"].as_u64(), Some(2_000_000), "{got} / {sent}");
    assert_eq!(got["sha256"], sent["sha256"]);

    // Taking b out of the group cuts a's access to it at once, and b's
    // link key ends (a group member that leaves gets a fresh epoch).
    let epoch_before = key_epoch(&net, "b");
    net.hub_ok(&["group", "remove-member", "servers", "spoke:b"]);
    assert_eq!(udp_through(&net, &net.ns_a, &net.ns_b, B_TUNNEL, "5353"), 0);
    net.wait_for(
        "b's key to rotate after it left the group",
        Duration::from_secs(20),
        || key_epoch(&net, "b") > epoch_before,
    );
    // A group still named by a rule cannot go.
    let busy = net.hub_cli(&["group", "remove", "servers"]);
    assert!(!busy.status.success());
    assert!(
        output_text(&busy).contains("rule(s) [1]"),
        "{}",
        output_text(&busy)
    );

    // The policy is stored: a restarted hub enforces the same one.
    let before = access_json(&net);
    let hub = net.hub.clone();
    net.sigterm(&hub);
    net.restart_hub();
    assert_eq!(access_json(&net), before);
    net.wait_for(
        "spoke a to ping the hub after the restart",
        Duration::from_secs(30),
        || net.ping(&net.ns_a, HUB_TUNNEL, 1),
    );
    assert!(
        !net.ping(&net.ns_a, B_TUNNEL, 2),
        "the restarted hub forgot the policy"
    );

    // Back to open: everything passes again; the audit log has every change.
    net.hub_ok(&["access", "remove", "1"]);
    net.hub_ok(&["group", "remove", "servers"]);
    net.hub_ok(&["access", "mode", "open"]);
    net.wait_for("a to ping b in open mode", Duration::from_secs(10), || {
        net.ping(&net.ns_a, B_TUNNEL, 1)
    });
    let audit: Value = serde_json::from_str(&net.hub_ok(&["audit", "--json"])).unwrap();
    let changes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "access_change")
        .filter_map(|r| r["detail"].as_str())
        .collect();
    assert!(changes.len() >= 9, "{changes:?}");
    assert!(changes.contains(&"mode enforce"), "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| c.contains("allow spoke:a -> group:servers udp/5353")),
        "{changes:?}"
    );
}

#[test]
fn a_users_rules_follow_the_login() {
    if skip_unless_root("a_users_rules_follow_the_login") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let _hub = t.start_hub();
    let inv = t.invite_with("laptop", &["--pre-approved"]);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("laptop"));
    let socket = t.spoke_socket("laptop");
    let _laptop = t.start_spoke(&t.ns_a, &t.spoke_dir("laptop"), &socket);
    let out = t.hub_ok(&["user", "add", "alice", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let initial = v["initial_password"].as_str().unwrap().to_owned();
    t.hub_ok(&["user", "allow", "alice", "--spoke", "laptop"]);
    t.hub_ok(&["group", "add", "eng"]);
    t.hub_ok(&["group", "add-member", "eng", "user:alice"]);
    t.hub_ok(&[
        "access",
        "allow",
        "--from",
        "group:eng",
        "--to",
        "192.168.77.0/24",
        "--service",
        "icmp",
    ]);
    t.hub_ok(&["access", "mode", "enforce"]);

    let login = spoke_stdin(
        &socket,
        &["login", "alice", "--password-stdin"],
        &format!("{initial}\ncorrect horse battery staple\n"),
    );
    assert!(login.status.success(), "{}", output_text(&login));
    // alice is in eng, eng may reach the LAN: the laptop pings the LAN host,
    // but not the hub (no rule for it).
    t.wait_for(
        "alice's laptop to ping the LAN",
        Duration::from_secs(20),
        || t.ping(&t.ns_a, LAN_HOST, 1),
    );
    assert!(
        !t.ping(&t.ns_a, HUB_TUNNEL, 2),
        "the laptop pinged the hub with no rule"
    );
    // Out of the group, alice's packets are nobody's business: refused.
    t.hub_ok(&["group", "remove-member", "eng", "user:alice"]);
    let denied = t.hub_dropped("denied");
    assert!(
        !t.ping(&t.ns_a, LAN_HOST, 2),
        "alice left eng, yet reached the LAN"
    );
    assert!(t.hub_dropped("denied") > denied, "{}", t.hub_status_json());
    // A rule for alice herself works while she is logged in...
    t.hub_ok(&[
        "access",
        "allow",
        "--from",
        "user:alice",
        "--to",
        "hub",
        "--service",
        "icmp",
    ]);
    t.wait_for("alice's own rule to apply", Duration::from_secs(10), || {
        t.ping(&t.ns_a, HUB_TUNNEL, 1)
    });
    // ...and no longer once she logged out and someone else logged in.
    let out = t.spoke_cli(&socket, &["logout"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let bob = t.hub_ok(&["user", "add", "bob", "--json"]);
    let bob: Value = serde_json::from_str(&bob).unwrap();
    let bob_initial = bob["initial_password"].as_str().unwrap().to_owned();
    t.hub_ok(&["user", "allow", "bob", "--spoke", "laptop"]);
    t.hub_ok(&[
        "access",
        "allow",
        "--from",
        "user:bob",
        "--to",
        "192.168.77.0/24",
        "--service",
        "icmp",
    ]);
    let login = spoke_stdin(
        &socket,
        &["login", "bob", "--password-stdin"],
        &format!("{bob_initial}\nanother long password\n"),
    );
    assert!(login.status.success(), "{}", output_text(&login));
    let s = t.spoke_status_json(&socket);
    assert_eq!(s["users"], serde_json::json!(["bob"]), "{s}");
    // Positive control: bob's own rule carries his pings to the LAN.
    t.wait_for(
        "bob's laptop to ping the LAN",
        Duration::from_secs(20),
        || t.ping(&t.ns_a, LAN_HOST, 1),
    );
    assert!(!t.ping(&t.ns_a, HUB_TUNNEL, 2), "bob used alice's rule");
    // alice leaves the company: her rule goes with her, so that whoever is
    // given the id next does not inherit her access.
    t.hub_ok(&["user", "remove", "alice"]);
    let v = access_json(&t);
    assert!(!v.to_string().contains("user:alice"), "{v}");
    assert_eq!(v["rules"].as_array().map(Vec::len), Some(2), "{v}");
}
