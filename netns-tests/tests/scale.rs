//! A hub with hundreds of spokes: enrolled over the real Noise enrolment
//! (`tasuki-benchtool`), it restarts and serves a real spoke again — more
//! links than the data plane's command queue holds, all handed over at
//! start.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{binaries, skip_unless_root, Topology, HUB_ENDPOINT, HUB_TUNNEL};

const SPOKES: u64 = 400;

#[test]
fn a_hub_with_hundreds_of_spokes_restarts_and_serves() {
    if skip_unless_root("a_hub_with_hundreds_of_spokes_restarts_and_serves") {
        return;
    }
    let t = Topology::new();
    // A /16 tunnel network: room for more spokes than a /24's 253.
    let hub_dir = t.hub_dir();
    t.exec_ok(
        &t.ns_hub,
        &[
            binaries().hub.as_os_str(),
            "init".as_ref(),
            "--state-dir".as_ref(),
            hub_dir.as_os_str(),
            "--endpoint".as_ref(),
            HUB_ENDPOINT.as_ref(),
            "--tunnel-net".as_ref(),
            "10.77.0.0/16".as_ref(),
        ],
    );
    let hub = t.start_hub();
    let inv = t.invite_with("real", &["--pre-approved", "--service"]);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("real"));
    let socket = t.spoke_socket("real");
    let _real = t.start_spoke(&t.ns_a, &t.spoke_dir("real"), &socket);
    let benchtool = binaries().nettool.with_file_name("tasuki-benchtool");
    let hub_socket = t.hub_socket();
    let out = t.exec_ok(
        &t.ns_hub,
        &[
            benchtool.as_os_str(),
            "enrol".as_ref(),
            "--admin-socket".as_ref(),
            hub_socket.as_os_str(),
            "--count".as_ref(),
            SPOKES.to_string().as_ref(),
            "--seconds".as_ref(),
            "90".as_ref(),
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(v["enrolled"].as_u64(), Some(SPOKES), "{out}");
    assert_eq!(t.hub_status().spokes_active as u64, SPOKES + 1);

    t.sigterm(&hub);
    let _hub = t.start_hub();
    assert_eq!(t.hub_status().spokes_active as u64, SPOKES + 1);
    // Service spokes only here: the real one needs no login to carry traffic.
    t.wait_for(
        "the real spoke to reach the restarted hub",
        Duration::from_secs(30),
        || t.ping(&t.ns_a, HUB_TUNNEL, 1),
    );
}
