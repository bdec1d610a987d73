//! Spokes behind NAT routers: the remote worker's case. A spoke behind a
//! NAT is reachable through the relay from the moment it is up (issue 23),
//! and stays reachable while it is idle when its keepalive is shorter than
//! the router's UDP timeout. Skipped unless root.

use std::time::Duration;

use tasuki_netns_tests::{
    skip_unless_root, Mapping, Nat, Topology, A_TUNNEL, B_TUNNEL, HUB_TUNNEL,
};

/// Spoke c's tunnel address: the third spoke enrolled.
const C_TUNNEL: &str = "10.77.0.4";

/// A hub, spokes a and b on the WAN bridge and spoke c behind a NAT router,
/// all pre-approved service spokes, enrolled and running in that order.
struct NatNet {
    t: Topology,
    nat: Nat,
}

impl NatNet {
    /// Steps 1 and 2 of the issue: a and b up and reaching each other, then
    /// c enrolled through the NAT and running (`c_flags` for its `run`).
    fn up(mapping: Mapping, udp_timeout: Option<u32>, c_flags: &[&str]) -> Self {
        let mut t = Topology::new();
        let nat = t.add_nat(0, mapping);
        if let Some(secs) = udp_timeout {
            t.nat_udp_timeout(&nat, secs);
        }
        t.hub_init();
        let hub = t.start_hub();
        for (name, ns) in [("a", t.ns_a.clone()), ("b", t.ns_b.clone())] {
            let inv = t.invite_with(name, &["--pre-approved", "--service"]);
            t.enrol_ok(&ns, &inv, &t.spoke_dir(name));
            t.start_spoke(&ns, &t.spoke_dir(name), &t.spoke_socket(name));
        }
        t.wait_for("a to reach b", Duration::from_secs(30), || {
            t.must_be_alive(&hub);
            t.ping(&t.ns_a, B_TUNNEL, 1)
        });
        let inv = t.invite_with("c", &["--pre-approved", "--service"]);
        t.enrol_ok(&nat.host, &inv, &t.spoke_dir("c"));
        let c = t.start_spoke_with(&nat.host, &t.spoke_dir("c"), &t.spoke_socket("c"), c_flags);
        t.wait_for("c's tunnel address", Duration::from_secs(30), || {
            t.must_be_alive(&c);
            let out = t.exec(&nat.host, &["ip", "-4", "-o", "addr", "show"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("{C_TUNNEL}/"))
        });
        NatNet { t, nat }
    }

    /// The hub's view of c: its endpoint must be the router's address.
    fn check_c_seen_through_the_router(&self) {
        let t = &self.t;
        let c = t
            .spoke_list()
            .into_iter()
            .find(|s| s["name"] == "c")
            .unwrap_or_else(|| t.fail("the hub does not list spoke c"));
        let endpoint = c["endpoint"].as_str().unwrap_or_default().to_string();
        if !endpoint.starts_with(&format!("{}:", self.nat.wan_addr)) {
            t.fail(&format!(
                "the hub sees c at {endpoint:?}, not behind the router {}",
                self.nat.wan_addr
            ));
        }
    }

    /// Pings `addr` from `ns` once, waiting up to 2 s for the reply.
    fn first_ping(&self, ns: &str, addr: &str) -> bool {
        let out = self
            .t
            .exec(ns, &["ping", "-n", "-q", "-c", "1", "-W", "2", addr]);
        out.status.success()
    }

    /// What the hub's counters say about lost packets, for messages.
    fn hub_counters(&self) -> String {
        self.t.hub_status_json()["counters"].to_string()
    }
}

/// Issue 23, exactly: c comes up behind the NAT, pings the hub, and then a
/// pings c through the relay: the first ping is answered and so is every
/// one after it, in every one of 20 fresh topologies (and 4 more behind a
/// symmetric NAT, which the relay must not mind either).
#[test]
fn a_spoke_behind_a_nat_is_reachable_through_the_relay_from_the_start() {
    if skip_unless_root("a_spoke_behind_a_nat_is_reachable_through_the_relay_from_the_start") {
        return;
    }
    let rounds = (0..20)
        .map(|_| Mapping::EndpointIndependent)
        .chain((0..4).map(|_| Mapping::Symmetric));
    for (round, mapping) in rounds.enumerate() {
        let net = NatNet::up(mapping, None, &[]);
        let t = &net.t;
        std::thread::sleep(Duration::from_secs(3));
        if !t.ping(&net.nat.host, HUB_TUNNEL, 2) {
            t.fail(&format!(
                "round {round} ({mapping:?}): c cannot ping the hub"
            ));
        }
        net.check_c_seen_through_the_router();
        if !net.first_ping(&t.ns_a, C_TUNNEL) {
            t.fail(&format!(
                "round {round} ({mapping:?}): a's first ping to c through the relay was lost; hub counters {}",
                net.hub_counters()
            ));
        }
        let out = t.exec(
            &t.ns_a,
            &[
                "ping", "-n", "-q", "-c", "5", "-i", "0.2", "-W", "1", C_TUNNEL,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.contains(" 5 received") {
            t.fail(&format!(
                "round {round} ({mapping:?}): a → c lost pings: {text}\nhub counters {}",
                net.hub_counters()
            ));
        }
        // And the way back, which starts at c.
        if !t.ping(&net.nat.host, A_TUNNEL, 1) {
            t.fail(&format!("round {round} ({mapping:?}): c cannot reach a"));
        }
    }
}

/// A NAT that forgets a UDP mapping after 10 s of silence, and c's
/// keepalive at 4 s: after a minute without traffic a reaches c at the
/// first ping (the hub's way to c is still open).
#[test]
fn an_idle_spoke_behind_a_forgetful_nat_stays_reachable() {
    if skip_unless_root("an_idle_spoke_behind_a_forgetful_nat_stays_reachable") {
        return;
    }
    let net = NatNet::up(
        Mapping::EndpointIndependent,
        Some(10),
        &["--keepalive", "4"],
    );
    let t = &net.t;
    t.wait_for("c to ping the hub", Duration::from_secs(20), || {
        t.ping(&net.nat.host, HUB_TUNNEL, 1)
    });
    if !net.first_ping(&t.ns_a, C_TUNNEL) {
        t.fail(&format!(
            "a cannot reach c; hub counters {}",
            net.hub_counters()
        ));
    }
    let timeout = t.exec_ok(
        &net.nat.router,
        &[
            "sysctl",
            "-n",
            "net.netfilter.nf_conntrack_udp_timeout_stream",
        ],
    );
    assert_eq!(timeout, "10", "the router's UDP timeout did not take");
    std::thread::sleep(Duration::from_secs(60));
    if !net.first_ping(&t.ns_a, C_TUNNEL) {
        t.fail(&format!(
            "after 60 s idle, a's first ping to c was lost; hub counters {}",
            net.hub_counters()
        ));
    }
}
