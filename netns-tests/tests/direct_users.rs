//! Direct mode (issue 14) and the things that end a user's or a group's
//! right to talk: a logout on a user spoke, a group change under an
//! enforced policy; and tcpdump on the WAN bridge seeing the direct
//! datagrams between the spokes' underlay addresses. Skipped unless root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{
    output_text, skip_unless_root, spoke_stdin, Proc, Topology, TwoSpokes, A_TUNNEL, A_WAN,
    B_TUNNEL, B_WAN, HUB_TUNNEL,
};

/// How long a pair may take to end on both spokes and the hub after the
/// event that ends it ("at once": a control round trip, with slack).
const ENDS_WITHIN: Duration = Duration::from_secs(2);

/// Waits (at most [`ENDS_WITHIN`]) until neither spoke has a peer and the
/// hub lists no pair; returns how long that took.
fn wait_pair_gone(t: &Topology, a: &Path, b: &Path, after: &str) -> Duration {
    let start = Instant::now();
    t.wait_for(
        &format!("the pair to end on both spokes and the hub after {after}"),
        ENDS_WITHIN,
        || t.peers(a).is_empty() && t.peers(b).is_empty() && t.pair_list().is_empty(),
    );
    let took = start.elapsed();
    eprintln!("the pair ended {took:?} after {after}");
    took
}

/// A user's password, after the first login changed the initial one.
const PASSWORD: &str = "correct horse battery staple";

/// Two user spokes (no `--service`): a in ns a (10.77.0.2), b in ns b
/// (10.77.0.3); alice may use a, bob may use b.
struct TwoUsers {
    t: Topology,
    _hub: Proc,
    _a: Proc,
    _b: Proc,
    a_socket: PathBuf,
    b_socket: PathBuf,
}

impl TwoUsers {
    fn up() -> Self {
        let t = Topology::new();
        t.hub_init();
        let hub = t.start_hub();
        let (a_socket, b_socket) = (t.spoke_socket("a"), t.spoke_socket("b"));
        let inv = t.invite_with("a", &["--pre-approved"]);
        t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("a"));
        let inv = t.invite_with("b", &["--pre-approved"]);
        t.enrol_ok(&t.ns_b, &inv, &t.spoke_dir("b"));
        let a = t.start_spoke(&t.ns_a, &t.spoke_dir("a"), &a_socket);
        let b = t.start_spoke(&t.ns_b, &t.spoke_dir("b"), &b_socket);
        let net = TwoUsers {
            t,
            _hub: hub,
            _a: a,
            _b: b,
            a_socket,
            b_socket,
        };
        net.first_login("alice", "a", &net.a_socket);
        net.first_login("bob", "b", &net.b_socket);
        net
    }

    /// Adds `user`, allows them on `spoke` and logs them in there for the
    /// first time (the initial password changed to [`PASSWORD`]).
    fn first_login(&self, user: &str, spoke: &str, socket: &Path) {
        let t = &self.t;
        let v: Value = serde_json::from_str(&t.hub_ok(&["user", "add", user, "--json"]))
            .unwrap_or_else(|e| t.fail(&format!("user add --json is no JSON: {e}")));
        let initial = v["initial_password"]
            .as_str()
            .unwrap_or_else(|| t.fail(&format!("no initial password: {v}")))
            .to_owned();
        t.hub_ok(&["user", "allow", user, "--spoke", spoke]);
        let out = spoke_stdin(
            socket,
            &["login", user, "--password-stdin"],
            &format!("{initial}\n{PASSWORD}\n"),
        );
        assert!(out.status.success(), "{user}: {}", output_text(&out));
    }

    fn login(&self, user: &str, socket: &Path) {
        let out = spoke_stdin(
            socket,
            &["login", user, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success(), "{user}: {}", output_text(&out));
    }
}

#[test]
fn a_logout_ends_the_pair_at_once_and_a_new_login_goes_direct_again() {
    if skip_unless_root("direct_users::a_logout_ends_the_pair_at_once") {
        return;
    }
    let net = TwoUsers::up();
    let t = &net.t;
    let (a, b) = (&net.a_socket, &net.b_socket);
    t.wait_for(
        "both spokes to carry traffic",
        Duration::from_secs(20),
        || t.ping(&t.ns_a, HUB_TUNNEL, 1) && t.ping(&t.ns_b, HUB_TUNNEL, 1),
    );
    t.direct_on();
    t.wait_direct(&t.ns_a, a, B_TUNNEL);
    t.wait_direct(&t.ns_b, b, A_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20, "a ↔ b direct");
    assert_eq!(
        t.relayed(),
        before,
        "the hub relayed none of the direct pings"
    );
    assert_eq!(t.pair_list().len(), 1, "{:?}", t.pair_list());

    // Bob logs out: nobody is logged in on b, so b carries nothing and the
    // pair ends at once on both sides and on the hub.
    let out = t.spoke_cli(b, &["logout", "bob"]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_pair_gone(t, a, b, "bob's logout");
    let s = t.spoke_status_json(b);
    assert_eq!(s["users"], serde_json::json!([]), "{s}");
    assert_eq!(s["carrying"], false, "{s}");
    // a's pings to b go to the relay, and the hub carries nothing for b.
    assert_eq!(
        t.pings(&t.ns_a, B_TUNNEL, 10),
        0,
        "b answered with nobody logged in"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        t.pings(&t.ns_a, B_TUNNEL, 10),
        0,
        "b answered with nobody logged in"
    );
    assert!(
        t.pair_list().is_empty() && t.peers(a).is_empty(),
        "a's pings got a new pair for a spoke with nobody logged in: {:?}",
        t.pair_list()
    );

    // Bob logs in again: a ↔ b goes direct again.
    net.login("bob", b);
    t.wait_for("b to carry traffic again", Duration::from_secs(20), || {
        t.ping(&t.ns_b, HUB_TUNNEL, 1)
    });
    t.wait_direct(&t.ns_a, a, B_TUNNEL);
    t.wait_direct(&t.ns_b, b, A_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20, "a ↔ b direct again");
    assert_eq!(t.relayed(), before, "none of it through the hub");
}

#[test]
fn a_group_change_ends_the_pair_under_enforce_and_a_new_member_goes_direct_again() {
    if skip_unless_root("direct_users::a_group_change_ends_the_pair") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    let (a, b) = (&net.a_socket, &net.b_socket);
    t.hub_ok(&["group", "add", "eng"]);
    t.hub_ok(&["group", "add-member", "eng", "spoke:b"]);
    t.hub_ok(&[
        "access",
        "allow",
        "--from",
        "spoke:a",
        "--to",
        "group:eng",
        "--service",
        "icmp",
    ]);
    t.hub_ok(&["access", "mode", "enforce"]);
    t.direct_on();
    t.wait_direct(&t.ns_a, a, B_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20, "a may ping b, direct");
    assert_eq!(t.relayed(), before, "none of it through the hub");

    // b leaves eng: nothing between a and b is allowed any more.
    t.hub_ok(&["group", "remove-member", "eng", "spoke:b"]);
    wait_pair_gone(t, a, b, "b left the group");
    let denied = t.hub_dropped("denied");
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 10), 0, "a pinged b outside eng");
    assert!(
        t.hub_dropped("denied") >= denied + 10,
        "the hub's gate dropped the relayed pings: {}",
        t.hub_status_json()["counters"]["dropped"]
    );
    assert!(
        t.pair_list().is_empty(),
        "a got a pair: {:?}",
        t.pair_list()
    );

    // b back in eng: a → b goes direct again.
    t.hub_ok(&["group", "add-member", "eng", "spoke:b"]);
    t.wait_direct(&t.ns_a, a, B_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20, "direct again");
    assert_eq!(t.relayed(), before, "none of it through the hub");
}

/// Datagrams between the two underlay addresses in a tcpdump listing, as
/// (source, destination) pairs `ip.port`.
fn captured_between(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|l| {
            // "12:00:00.000000 wa    P   IP 172.30.0.11.41234 > 172.30.0.12.51000: UDP, length 128"
            let rest = &l[l.find(" IP ")? + 4..];
            let (src, rest) = rest.split_once(" > ")?;
            let dst = rest.split(':').next()?;
            Some((src.trim().to_owned(), dst.trim().to_owned()))
        })
        .collect()
}

#[test]
fn tcpdump_on_the_wan_sees_the_direct_datagrams_between_the_spokes() {
    if skip_unless_root("direct_users::tcpdump_on_the_wan_sees_the_direct_datagrams") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    let filter = format!("udp and host {A_WAN} and host {B_WAN}");
    let out = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            t.exec(
                &t.ns_wan,
                &[
                    "timeout", "10", "tcpdump", "-i", "any", "-n", "-l", "-c", "20", &filter,
                ],
            )
        });
        // tcpdump needs a moment to listen; pings until it has 20 or stops.
        std::thread::sleep(Duration::from_millis(1500));
        let before = t.relayed();
        let mut answered = 0;
        while !capture.is_finished() {
            answered += t.pings(&t.ns_a, B_TUNNEL, 10);
        }
        assert!(answered >= 10, "a's pings to b were answered ({answered})");
        assert_eq!(t.relayed(), before, "the hub relayed none of them");
        capture.join().expect("the capture thread")
    });
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump did not see 20 datagrams within 10 s ({}): {}",
        out.status,
        output_text(&out)
    );
    let seen = captured_between(&listing);
    assert!(seen.len() >= 20, "{listing}");
    let a_to_b = |(s, d): &&(String, String)| {
        s.starts_with(&format!("{A_WAN}.")) && d.starts_with(&format!("{B_WAN}."))
    };
    let b_to_a = |(s, d): &&(String, String)| {
        s.starts_with(&format!("{B_WAN}.")) && d.starts_with(&format!("{A_WAN}."))
    };
    assert!(seen.iter().all(|x| a_to_b(&x) || b_to_a(&x)), "{listing}");
    assert!(seen.iter().any(|x| a_to_b(&x)), "nothing a → b: {listing}");
    assert!(seen.iter().any(|x| b_to_a(&x)), "nothing b → a: {listing}");
    eprintln!("tcpdump in the WAN namespace:\n{listing}");
}
