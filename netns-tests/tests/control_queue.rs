//! The hub's per-spoke control queue (16 messages, `hub/src/control.rs`)
//! filled while a spoke's control connection is stalled: the spoke process
//! is stopped (SIGSTOP) with tiny TCP buffers on both ends, so the socket
//! fills after some 5 KB, the hub's connection task blocks in its write and
//! the queue behind it fills. Meanwhile the hub rotates the spoke's link
//! again and again (one new epoch is issued, whose delivery goes unanswered
//! and is sent again every 5 s; the later requests wait as one), logs users
//! out of it and announces well over a hundred of a user's new devices to
//! it, until its log shows that messages wait in the backlog
//! (`hub/src/state/outbox.rs`). After SIGCONT nothing is lost: every
//! announcement arrives, the spoke hears the last session facts, both sides
//! end up on the hub's newest epoch (past the one asked for while stopped)
//! with nothing unacknowledged, the session is up and traffic flows.
//!
//! And the same notices when the stalled session is lost instead: spoke a
//! is killed while stopped, with the announcements in its socket, in the
//! hub's queue and in the backlog (which the hub forgets when the session
//! ends); started again, it hears every one of them when it attaches
//! (`HubState::session_messages`, `hub/src/state/users.rs`), once.
//!
//! Skipped unless root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{
    binaries, output_text, skip_unless_root, spoke_stdin, Proc, Topology, TwoSpokes, B_TUNNEL,
    HUB_TUNNEL, LAN_HOST,
};

/// The hub's log filter: the debug lines of the backlog and of the key
/// schedule's sends show, the rest stays at info.
const HUB_LOG: &str = "info,tasuki_hub::state::outbox=debug,tasuki_hub::state::rotation=debug";
/// What the hub logs when a message finds the queue full and waits in the backlog.
const BACKLOG_LINE: &str = "control queue full; the message goes at the next tick";
/// What spoke a logs for each device notice it hears.
const NOTICE_LINE: &str = "a new device waits for confirmation";
/// What the hub logs when a key message finds the queue full (it is sent again later).
const KEY_LINE: &str = "control queue full or closed; the key message goes again later";
/// The TCP buffer sizes (min, default, max) set in the hub's and spoke a's namespaces.
const TINY: &str = "4096 4096 4096";
/// Device invitations alice makes on spoke a beforehand: enough to fill
/// the stalled socket (about 5 KB here, some 90 announcements), the queue
/// (16) and [`MARGIN`] more (the tunnel network has room for them all).
const INVITATIONS: usize = 200;
/// Announcements made once the hub logged the full queue: each of them
/// goes to the backlog.
const MARGIN: usize = 30;
/// The same for the session that is lost: a few are enough.
const LOST_MARGIN: usize = 8;
/// Enrolments between two looks at the hub's log.
const BATCH: usize = 8;
/// Users logged in on spoke a and removed (logged out) while it is stopped.
const USERS: usize = 8;
/// `key rotate --spoke a` calls while it is stopped.
const ROTATIONS: usize = 20;
/// Enrolments running at once.
const ENROLLERS: usize = 4;
const PASSWORD: &str = "correct horse battery staple";

/// Sets the TCP buffer sysctls of namespace `ns` to [`TINY`] and checks them.
fn shrink_tcp_buffers(t: &Topology, ns: &str) {
    let rmem = format!("net.ipv4.tcp_rmem={TINY}");
    let wmem = format!("net.ipv4.tcp_wmem={TINY}");
    t.exec_ok(ns, &["sysctl", "-qw", &rmem, &wmem]);
    for key in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
        let now = t.exec_ok(ns, &["sysctl", "-n", key]);
        let now = now.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(now, TINY, "{key} in {ns}");
    }
}

/// [`TwoSpokes::up`] with the hub's debug lines for the queue on and tiny
/// TCP buffers in the hub's and spoke a's namespaces (set before any
/// control connection exists, so every one of them gets them).
fn up() -> TwoSpokes {
    let prepare = |t: &Topology| {
        shrink_tcp_buffers(t, &t.ns_hub);
        shrink_tcp_buffers(t, &t.ns_a);
    };
    TwoSpokes::up_with_hub_args(prepare, &["--log", HUB_LOG]).0
}

/// Adds user `id`, lets them use spoke a and logs them in there (changing
/// the initial password).
fn login_on_a(net: &TwoSpokes, id: &str) {
    let t = &net.topo;
    let added: Value = serde_json::from_str(&t.hub_ok(&[
        "user",
        "add",
        id,
        "--name",
        &format!("User {id}"),
        "--json",
    ]))
    .unwrap_or(Value::Null);
    let Some(initial) = added["initial_password"].as_str() else {
        t.fail(&format!(
            "`user add {id}` printed no initial password: {added}"
        ));
    };
    t.hub_ok(&["user", "allow", id, "--spoke", "a"]);
    let login = spoke_stdin(
        &net.a_socket,
        &["login", id, "--password-stdin"],
        &format!("{initial}\n{PASSWORD}\n"),
    );
    if !login.status.success() {
        t.fail(&format!(
            "login of {id} on a failed: {}",
            output_text(&login)
        ));
    }
}

/// A string array of a JSON value, as strings.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// How often `line` occurs in the hub's log.
fn hub_log_count(t: &Topology, line: &str) -> usize {
    std::fs::read_to_string(t.hub_log())
        .unwrap_or_default()
        .matches(line)
        .count()
}

/// How many times the hub logged spoke a attaching.
fn a_attaches(t: &Topology) -> usize {
    std::fs::read_to_string(t.hub_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("spoke attached") && l.contains("spoke=a "))
        .count()
}

/// The process state letter of `pid` (`T` when stopped), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Spoke a stopped with SIGSTOP; continued (SIGCONT) when dropped, also
/// when the test fails while it is stopped (the topology then kills it).
struct Stopped {
    pid: u32,
}

impl Stopped {
    fn new(t: &Topology, p: &Proc) -> Self {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).unwrap_or_default();
        if comm.trim() != "tasuki-spoke" {
            t.fail(&format!("pid {} is {comm:?}, not tasuki-spoke", p.pid));
        }
        // SAFETY: kill(2) on a child of this process that the topology has not reaped.
        unsafe {
            libc::kill(p.pid as libc::pid_t, libc::SIGSTOP);
        }
        t.wait_for("spoke a to stop", Duration::from_secs(5), || {
            proc_state(p.pid) == Some('T')
        });
        Stopped { pid: p.pid }
    }

    fn resume(self) {
        drop(self);
    }

    /// Kills the stopped spoke `p` (SIGKILL, reaped): there is nothing left
    /// to continue.
    fn kill(self, t: &Topology, p: &Proc) {
        assert_eq!(p.pid, self.pid, "not the stopped process");
        t.kill9(p);
        std::mem::forget(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above; the topology still holds the child.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGCONT);
        }
    }
}

/// Enrols every `(name, invitation)` from namespace b as a device of
/// alice, [`ENROLLERS`] at a time; each leaves it waiting for confirmation.
fn enrol_devices(t: &Topology, devices: &[(String, String)]) {
    let spoke = binaries().spoke.to_string_lossy().into_owned();
    let per = devices.len().div_ceil(ENROLLERS);
    std::thread::scope(|s| {
        let workers: Vec<_> = devices
            .chunks(per)
            .map(|chunk| {
                let spoke = &spoke;
                s.spawn(move || {
                    for (name, invitation) in chunk {
                        let dir: PathBuf = t.dir().join(format!("device-{name}"));
                        let out = t.exec(
                            &t.ns_b,
                            &[
                                spoke.as_str(),
                                "enrol",
                                invitation,
                                "--state-dir",
                                &dir.to_string_lossy(),
                                "--as-user",
                                "alice",
                            ],
                        );
                        if !out.status.success() {
                            t.fail(&format!("enrolment of {name}: {}", output_text(&out)));
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            if let Err(p) = w.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
}

/// The hub's key status of spoke a's link.
fn link_a(t: &Topology) -> Value {
    t.hub_link("a")
        .unwrap_or_else(|| t.fail("the hub shows no key status for spoke a"))
}

/// Spoke a's status, if it answers.
fn status_a(t: &Topology, socket: &Path) -> Option<Value> {
    let out = t.spoke_cli(socket, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

/// Alice invites [`INVITATIONS`] new devices from spoke a: their names and
/// invitations.
fn invite_devices(net: &TwoSpokes) -> Vec<(String, String)> {
    let t = &net.topo;
    (1..=INVITATIONS)
        .map(|i| {
            let name = format!("alice-dev{i:03}");
            let out = t.spoke_cli(&net.a_socket, &["invite-device", &name, "--user", "alice"]);
            if !out.status.success() {
                t.fail(&format!("invite-device {name}: {}", output_text(&out)));
            }
            let invitation = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (name, invitation)
        })
        .collect()
}

/// Enrols `devices` in order while spoke a is stopped, each announced to
/// it: [`BATCH`] at a time until the hub logs that a's queue is full, then
/// `margin` more, which all wait in the backlog (while older messages wait,
/// newer ones wait behind them). Returns how many were enrolled when the
/// queue was found full, and in all.
fn enrol_until_backlog(
    t: &Topology,
    devices: &[(String, String)],
    margin: usize,
) -> (usize, usize) {
    let backlog_before = hub_log_count(t, BACKLOG_LINE);
    let mut enrolled = 0;
    while hub_log_count(t, BACKLOG_LINE) == backlog_before {
        if enrolled + BATCH > devices.len() - margin {
            t.fail(&format!(
                "{enrolled} announcements to the stopped spoke a and the hub never logged \
                 \"{BACKLOG_LINE}\""
            ));
        }
        enrol_devices(t, &devices[enrolled..enrolled + BATCH]);
        enrolled += BATCH;
    }
    let filled_after = enrolled;
    enrol_devices(t, &devices[enrolled..enrolled + margin]);
    (filled_after, enrolled + margin)
}

/// Waits until spoke a lists exactly `devices` as waiting, each once.
fn wait_devices_waiting(net: &TwoSpokes, devices: &[(String, String)]) {
    let t = &net.topo;
    let want: Vec<String> = devices.iter().map(|(n, _)| n.clone()).collect();
    let mut seen: Vec<String> = Vec::new();
    t.wait_for(
        &format!("spoke a to hear of all {} waiting devices", devices.len()),
        Duration::from_secs(60),
        || {
            t.must_be_alive(&net.a);
            if let Some(s) = status_a(t, &net.a_socket) {
                seen = strings(&s["devices_waiting"]);
            }
            want.iter().all(|n| seen.contains(n))
        },
    );
    assert_eq!(
        seen.len(),
        want.len(),
        "listed twice, or not alice's: {seen:?}"
    );
}

/// Waits until spoke a hears that only alice is logged in on it.
fn wait_only_alice(net: &TwoSpokes) {
    let t = &net.topo;
    t.wait_for(
        "spoke a to hear that only alice is logged in",
        Duration::from_secs(30),
        || status_a(t, &net.a_socket).is_some_and(|s| strings(&s["users"]) == ["alice"]),
    );
}

/// How many of alice's devices wait for approval at the hub.
fn alice_pending(t: &Topology) -> usize {
    t.spoke_list()
        .into_iter()
        .filter(|s| s["state"] == "pending" && s["owner"] == "alice")
        .count()
}

/// The devices of the notices spoke a logged from byte `from` of its log on, in order.
fn notices_logged(p: &Proc, from: usize) -> Vec<String> {
    let log = std::fs::read(&p.log).unwrap_or_default();
    let text = String::from_utf8_lossy(log.get(from..).unwrap_or_default());
    text.lines()
        .filter(|l| l.contains(NOTICE_LINE))
        .filter_map(|l| l.split(" device=").nth(1)?.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The length of `p`'s log now.
fn log_len(p: &Proc) -> usize {
    std::fs::metadata(&p.log).map_or(0, |m| m.len() as usize)
}

#[test]
fn a_full_control_queue_loses_no_delivery() {
    if skip_unless_root("a_full_control_queue_loses_no_delivery") {
        return;
    }
    let net = up();
    let t = &net.topo;
    // Rotations only when asked for; ended keys go soon.
    t.hub_ok(&["key", "policy", "set", "--interval", "off", "--grace", "2s"]);

    // Alice and USERS others logged in on a; alice invites INVITATIONS new
    // devices from there (their enrolment, later, announces each to a).
    login_on_a(&net, "alice");
    let users: Vec<String> = (1..=USERS).map(|i| format!("user{i}")).collect();
    for u in &users {
        login_on_a(&net, u);
    }
    t.wait_for(
        "spoke a to hear that all its users are logged in",
        Duration::from_secs(20),
        || status_a(t, &net.a_socket).is_some_and(|s| strings(&s["users"]).len() == USERS + 1),
    );
    let devices = invite_devices(&net);

    // Both sides agree, and a's control session is up.
    let before = wait_agreed(&net, 0);
    let link = link_a(t);
    assert_eq!(link["control_connected"], true, "{link}");
    let attaches_before = a_attaches(t);
    let (backlog_before, key_before) = (hub_log_count(t, BACKLOG_LINE), hub_log_count(t, KEY_LINE));

    // ----- spoke a stopped: its socket fills, then the hub's queue -----
    let stopped_at = Instant::now();
    let stopped = Stopped::new(t, &net.a);
    // The first rotation issues epoch before+1 (its delivery cannot be
    // answered); wait for it, so that the later requests wait as a new one.
    t.hub_ok(&["key", "rotate", "--spoke", "a"]);
    t.wait_for(
        "the hub to issue an epoch past the stopped spoke's",
        Duration::from_secs(10),
        || link_a(t)["latest"].as_u64().unwrap_or(0) > before,
    );
    // Each enrolment tells a that a device of alice waits: until a's queue
    // is full, then MARGIN more into the backlog.
    let (filled_after, enrolled) = enrol_until_backlog(t, &devices, MARGIN);
    let devices = &devices[..enrolled];
    // More rotations of a's link while its queue is full, and logouts: each
    // removal logs a user out of a (new session facts for a, and a
    // rotation request).
    for i in 0..USERS.max(ROTATIONS - 1) {
        if let Some(u) = users.get(i) {
            t.hub_ok(&["user", "remove", u]);
        }
        if i < ROTATIONS - 1 {
            t.hub_ok(&["key", "rotate", "--spoke", "a"]);
        }
    }
    // The unanswered delivery goes again every 5 s: it too finds the queue full.
    t.wait_for(
        "a key message to find spoke a's control queue full",
        Duration::from_secs(15),
        || hub_log_count(t, KEY_LINE) > key_before,
    );
    let link = link_a(t);
    assert_eq!(
        link["control_connected"], true,
        "the hub dropped the stalled session: {link}"
    );
    let backlog_lines = hub_log_count(t, BACKLOG_LINE) - backlog_before;
    let key_lines = hub_log_count(t, KEY_LINE) - key_before;
    let stopped_for = stopped_at.elapsed();
    stopped.resume();
    eprintln!(
        "spoke a stopped for {stopped_for:?}: {ROTATIONS} rotation requests, {USERS} logouts \
         (session facts), {enrolled} device announcements (the queue was full after \
         {filled_after}); the hub logged {backlog_lines} \"{BACKLOG_LINE}\" and {key_lines} \
         \"{KEY_LINE}\"; a's link then: {link}"
    );

    // ----- resumed: everything arrives -----
    wait_devices_waiting(&net, devices);
    wait_only_alice(&net);
    // The rotation under way when a stopped, then the one asked for while
    // it was (the requests wait as one).
    let after = wait_agreed(&net, before + 1);
    let link = link_a(t);
    assert_eq!(
        link["acked"], link["latest"],
        "unacknowledged deliveries: {link}"
    );
    assert_eq!(link["control_connected"], true, "{link}");
    let s = status_a(t, &net.a_socket).unwrap_or_else(|| t.fail("spoke a does not answer"));
    assert_eq!(s["control_connected"], true, "{s}");
    assert_eq!(s["state"], "running", "{s}");
    let held: Vec<u64> = s["held_epochs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert!(
        held.contains(&after),
        "spoke a holds {held:?}, not epoch {after}"
    );
    // Traffic through the tunnel: to the hub, to spoke b, to the LAN.
    for (what, addr) in [
        ("the hub", HUB_TUNNEL),
        ("spoke b", B_TUNNEL),
        ("the LAN host", LAN_HOST),
    ] {
        t.wait_for(
            &format!("spoke a to ping {what} ({addr}) after the stall"),
            Duration::from_secs(20),
            || t.ping(&t.ns_a, addr, 1),
        );
    }
    assert_eq!(
        alice_pending(t),
        devices.len(),
        "alice's devices waiting at the hub"
    );
    eprintln!(
        "after SIGCONT: {} device notices, the session facts and epoch {after} \
         (from {before}) arrived; spoke a attached {} time(s) during the stall",
        devices.len(),
        a_attaches(t) - attaches_before
    );
}

/// Waits until hub and spoke a agree on an epoch past `past`, with nothing
/// in flight (pinging the hub from a meanwhile, so that a new epoch is
/// confirmed by a packet), and returns it.
fn wait_agreed(net: &TwoSpokes, past: u64) -> u64 {
    let t = &net.topo;
    let mut agreed = 0;
    t.wait_for(
        &format!("hub and spoke a to agree on a key epoch past {past}"),
        Duration::from_secs(60),
        || {
            t.must_be_alive(&net.hub);
            t.must_be_alive(&net.a);
            let _ = t.ping(&t.ns_a, HUB_TUNNEL, 1);
            match t.agreed_epoch("a", &net.a_socket) {
                Some(k) if k > past => {
                    agreed = k;
                    t.hub_link("a").is_some_and(|l| l["acked"] == l["latest"])
                }
                _ => false,
            }
        },
    );
    agreed
}

/// Alice is logged in on spoke a, which is stopped; her new devices'
/// notices for it fill its socket, the hub's queue and the backlog; then
/// spoke a is killed, so the session ends with them unheard, and started
/// again. When it attaches it hears of every device waiting (the hub
/// kept alice's login), and lists each once.
#[test]
fn device_notices_survive_a_lost_session() {
    if skip_unless_root("device_notices_survive_a_lost_session") {
        return;
    }
    let mut net = up();
    let t = &net.topo;
    login_on_a(&net, "alice");
    wait_only_alice(&net);
    let devices = invite_devices(&net);
    // Attached, and nothing waits yet.
    let s = status_a(t, &net.a_socket).unwrap_or_else(|| t.fail("spoke a does not answer"));
    assert_eq!(s["control_connected"], true, "{s}");
    assert!(strings(&s["devices_waiting"]).is_empty(), "{s}");
    assert_eq!(alice_pending(t), 0, "alice's devices waiting at the hub");

    // ----- spoke a stopped: the notices wait for it -----
    let stopped = Stopped::new(t, &net.a);
    let (filled_after, enrolled) = enrol_until_backlog(t, &devices, LOST_MARGIN);
    let devices = &devices[..enrolled];
    assert_eq!(
        alice_pending(t),
        enrolled,
        "alice's devices waiting at the hub"
    );
    // Still stopped and still attached: the session holds the notices, and
    // spoke a has heard none of them.
    assert_eq!(proc_state(net.a.pid), Some('T'), "spoke a runs again");
    let link = link_a(t);
    assert_eq!(link["control_connected"], true, "{link}");
    let heard = notices_logged(&net.a, 0);
    assert!(heard.is_empty(), "spoke a heard of {heard:?} while stopped");

    // ----- the session is lost with them -----
    let (from, attaches_before) = (log_len(&net.a), a_attaches(t));
    let killed = net.a.clone();
    stopped.kill(t, &killed);
    t.wait_for(
        "the hub to see spoke a's session end",
        Duration::from_secs(15),
        || link_a(t)["control_connected"] == false,
    );
    net.restart_a();
    let t = &net.topo;

    // ----- started again: it hears them all, once -----
    wait_devices_waiting(&net, devices);
    wait_only_alice(&net);
    let heard = notices_logged(&net.a, from);
    let attaches = a_attaches(t) - attaches_before;
    assert!(attaches >= 1, "the hub logged no attach of spoke a");
    for (name, _) in devices {
        let times = heard.iter().filter(|n| *n == name).count();
        assert!(
            (1..=attaches).contains(&times),
            "spoke a heard of {name} {times} time(s) in {attaches} attach(es)"
        );
    }
    let s = status_a(t, &net.a_socket).unwrap_or_else(|| t.fail("spoke a does not answer"));
    assert_eq!(s["control_connected"], true, "{s}");
    eprintln!(
        "spoke a killed while stopped with {enrolled} device notices unheard (the queue was \
         full after {filled_after}); started again, it attached {attaches} time(s), logged \
         {} notices and lists all {enrolled} devices once",
        heard.len()
    );
}
