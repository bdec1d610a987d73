//! The hub's address changes (a new uplink, a new public address behind the
//! same DNS name): spokes that enrolled with the name find it again, both
//! on the control channel and on the data plane, with no action on their
//! side. Skipped unless root.

use std::ffi::OsStr;
use std::time::Duration;

use tasuki_netns_tests::{
    binaries, skip_unless_root, NetnsEtcFiles, Topology, B_TUNNEL, HUB_TUNNEL, LAN_NET, TUNNEL_NET,
};

const HUB_NAME: &str = "hub.tasuki.test";

#[test]
fn spokes_follow_the_hub_to_a_new_address() {
    if skip_unless_root("spokes_follow_the_hub_to_a_new_address") {
        return;
    }
    let t = Topology::new();
    // Each spoke namespace asks a DNS server of its own, which answers with
    // the address in one file: moving the hub is rewriting that file.
    let address_file = t.dir().join("hub-address");
    std::fs::write(&address_file, "172.30.0.1\n").expect("write address file");
    let nettool = binaries().nettool.to_string_lossy().into_owned();
    // `/etc/resolv.conf` inside each spoke namespace points at a test DNS
    // server on the namespace's loopback.
    let mut resolvers = NetnsEtcFiles::default();
    for ns in [&t.ns_a, &t.ns_b] {
        resolvers.write(ns, "resolv.conf", "nameserver 127.0.0.1\n");
        let ready = t.dir().join(format!("dns-{ns}.ready"));
        t.spawn(
            ns,
            &[
                nettool.as_str(),
                "dns-server",
                HUB_NAME,
                &address_file.to_string_lossy(),
                "600",
                "--ready",
                &ready.to_string_lossy(),
            ],
            &t.dir().join(format!("dns-{ns}.log")),
        );
        t.wait_for("the DNS server", Duration::from_secs(10), || ready.exists());
    }
    let endpoint = format!("{HUB_NAME}:51820");
    let hub_dir = t.hub_dir();
    t.exec_ok(
        &t.ns_hub,
        &[
            binaries().hub.as_os_str(),
            OsStr::new("init"),
            OsStr::new("--state-dir"),
            hub_dir.as_os_str(),
            OsStr::new("--endpoint"),
            OsStr::new(&endpoint),
            OsStr::new("--tunnel-net"),
            OsStr::new(TUNNEL_NET),
            OsStr::new("--route"),
            OsStr::new(LAN_NET),
        ],
    );
    let hub = t.start_hub();
    let (a_dir, b_dir) = (t.spoke_dir("a"), t.spoke_dir("b"));
    let (a_sock, b_sock) = (t.spoke_socket("a"), t.spoke_socket("b"));
    let inv_a = t.invite_with("a", &["--pre-approved", "--service"]);
    t.enrol_ok(&t.ns_a, &inv_a, &a_dir);
    let inv_b = t.invite_with("b", &["--pre-approved", "--service"]);
    t.enrol_ok(&t.ns_b, &inv_b, &b_dir);
    let a = t.start_spoke(&t.ns_a, &a_dir, &a_sock);
    let _b = t.start_spoke(&t.ns_b, &b_dir, &b_sock);
    t.wait_for("spoke a to ping spoke b", Duration::from_secs(30), || {
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });

    // The hub comes back on another address; the name follows it.
    t.kill9(&hub);
    // (Deleting the old primary address first: deleting it after adding the
    // new one would take the new, secondary one with it.)
    t.exec_ok(
        &t.ns_hub,
        &["ip", "addr", "del", "172.30.0.1/24", "dev", "eth0"],
    );
    t.exec_ok(
        &t.ns_hub,
        &["ip", "addr", "add", "172.30.0.5/24", "dev", "eth0"],
    );
    std::fs::write(&address_file, "172.30.0.5\n").expect("write address file");
    let _hub = t.start_hub();
    t.wait_for(
        "spoke a to reach the hub at its new address",
        Duration::from_secs(60),
        || t.ping(&t.ns_a, HUB_TUNNEL, 1),
    );
    t.wait_for(
        "spoke a to ping spoke b through the moved hub",
        Duration::from_secs(30),
        || t.ping(&t.ns_a, B_TUNNEL, 1),
    );
    t.must_be_alive(&a);
    drop(resolvers);
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(
        log.contains("the hub moved"),
        "spoke a did not say it followed the hub:\n{}",
        t.log_tails()
    );
}
