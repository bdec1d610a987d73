//! A full disk under the hub's store (issue 7): writes fail clearly, the hub
//! keeps relaying, nothing acknowledged is lost, and the store opens again.

mod common;

#[allow(unused_imports)]
use common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    binaries, skip_unless_root, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL, HUB_TUNNEL, LAN_HOST,
};

// ----- a full disk -----

/// A tmpfs mounted for a test; unmounted (lazily, so a process still using
/// it does not stop the clean-up) when dropped, also when the test panics.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Writes zeros to `filler` until the file system is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", filler.display()));
        for size in [1 << 16, 512, 1] {
            let chunk = vec![0u8; size];
            while f.write_all(&chunk).is_ok() {}
        }
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The topology unmounts what is left inside its directory when it
        // goes first.
        if tasuki_netns_tests::mounts_under(&self.path).is_empty() {
            return;
        }
        match Command::new("umount").arg("-l").arg(&self.path).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: cannot unmount {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run umount: {e}"),
        }
    }
}

/// The hub's state directory fills up. Every store write (invitation,
/// enrolment, user, rotation) fails with a clear error to the admin or the
/// spoke and in the hub's log; the hub keeps running and relaying; once
/// space is freed the same operations succeed, nothing earlier is lost, and
/// the store opens after a restart.
#[test]
fn a_full_disk_under_the_hub_store_loses_nothing() {
    if skip_unless_root("a_full_disk_under_the_hub_store_loses_nothing") {
        return;
    }
    let (mut net, disk) = TwoSpokes::up_with(|t| Tmpfs::mount(&t.hub_dir(), "8m"));
    let t = &net.topo;
    let out = t.hub_cli(&["user", "add", "alice", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let alice_pw = v["initial_password"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = t.hub_cli(&["user", "allow", "alice", "--spoke", "a"]);
    assert!(out.status.success(), "{}", text(&out));
    let spoke_bin = binaries().spoke.to_str().unwrap_or_default().to_owned();
    let a_sock = net.a_socket.to_str().unwrap_or_default().to_owned();
    // Alice's first login, with the change of her initial password.
    let login = |t: &Topology| {
        t.exec_stdin(
            &t.ns_a,
            &[
                spoke_bin.as_str(),
                "login",
                "alice",
                "--password-stdin",
                "--socket",
                a_sock.as_str(),
            ],
            &format!("{alice_pw}\nfull disks happen\n"),
            Duration::from_secs(40),
        )
    };
    let inv_c = t.invite_with("c", &["--pre-approved", "--service"]);
    let c_dir = t.spoke_dir("c");
    let ka = wait_agreed(t, "a", &net.a_socket, &t.ns_a, Duration::from_secs(20));
    let log_len = std::fs::metadata(t.hub_log()).map_or(0, |m| m.len());

    let filler = disk.fill();
    let full = |o: &Output| {
        let s = text(o);
        !o.status.success() && s.contains("No space left on device") && !s.contains("panicked")
    };
    let out = t.hub_cli(&["user", "add", "bob"]);
    assert!(full(&out), "user add on a full disk: {}", text(&out));
    let out = t.hub_cli(&["spoke", "invite", "d"]);
    assert!(full(&out), "invite on a full disk: {}", text(&out));
    let out = login(t);
    assert!(
        !out.status.success() && text(&out).contains("No space left on device"),
        "login on a full disk: {}",
        text(&out)
    );
    let out = t.enrol(&t.ns_b, &inv_c, &c_dir);
    assert!(
        !out.status.success() && text(&out).contains("try again"),
        "enrolment on a full disk: {}",
        text(&out)
    );
    // A rotation request is stored before it is acknowledged: refused too.
    let out = t.hub_cli(&["key", "rotate", "--spoke", "a"]);
    assert!(full(&out), "key rotate on a full disk: {}", text(&out));
    // The hub keeps relaying for the spokes it serves, on the epochs they have.
    std::thread::sleep(Duration::from_secs(2));
    t.must_be_alive(&net.hub);
    assert!(t.ping(&t.ns_a, B_TUNNEL, 3), "relay a→b on a full disk");
    assert!(t.ping(&t.ns_b, LAN_HOST, 2), "b → LAN on a full disk");
    assert!(t.hub_status_json()["spokes_active"] == 2);
    let log = std::fs::read(t.hub_log()).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[log_len as usize..]).into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("No space left on device")),
        "no error in the hub's log:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // A crash while the disk is still full: the hub comes back and serves
    // its spokes (nothing needs writing for that), or, if its store cannot
    // even open without room, it stops with an error that names the store
    // and says why. Never a reset, never a panic.
    let hub = net.hub.clone();
    net.topo.kill9(&hub);
    let (started, log_len) = {
        let t = &net.topo;
        let log_len = std::fs::metadata(t.hub_log()).map_or(0, |m| m.len());
        let p = t.spawn(
            &t.ns_hub,
            &[
                binaries().hub.as_os_str(),
                OsStr::new("run"),
                OsStr::new("--state-dir"),
                t.hub_dir().as_os_str(),
                OsStr::new("--admin-socket"),
                t.hub_socket().as_os_str(),
            ],
            &t.hub_log(),
        );
        t.wait_for(
            "the hub to start or stop on a full disk",
            Duration::from_secs(20),
            || !t.is_alive(&p) || t.hub_cli(&["status"]).status.success(),
        );
        ((t.is_alive(&p)).then_some(p), log_len)
    };
    match started {
        Some(p) => {
            net.hub = p;
            net.wait_tunnel_up(Duration::from_secs(30));
            eprintln!("the hub restarted on a full disk and serves its spokes");
        }
        None => {
            let t = &net.topo;
            let log = std::fs::read(t.hub_log()).unwrap_or_default();
            let log = String::from_utf8_lossy(&log[log_len as usize..]).into_owned();
            assert!(
                log.contains(t.hub_dir().join("store").to_str().unwrap_or("store"))
                    && log.contains("No space left on device")
                    && !log.contains("panicked"),
                "a hub that cannot start on a full disk must say why:\n{log}"
            );
            eprintln!("the hub refused to start on a full disk, naming its store");
        }
    }

    // Space again: the same operations succeed.
    std::fs::remove_file(&filler).unwrap_or_else(|e| panic!("cannot remove the filler: {e}"));
    if !net.is_alive(&net.hub) {
        net.restart_hub();
        net.wait_tunnel_up(Duration::from_secs(30));
    }
    let t = &net.topo;
    // Nothing of the refused login was kept: the initial password still
    // holds and must still be changed.
    let out = login(t);
    assert!(
        out.status.success(),
        "login after space was freed: {}",
        text(&out)
    );
    let out = t.hub_cli(&["user", "add", "bob"]);
    assert!(
        out.status.success(),
        "user add after space was freed: {}",
        text(&out)
    );
    let out = t.hub_cli(&["spoke", "invite", "d"]);
    assert!(
        out.status.success(),
        "invite after space was freed: {}",
        text(&out)
    );
    let out = t.enrol(&t.ns_b, &inv_c, &c_dir);
    assert!(
        out.status.success(),
        "enrolment after space was freed: {}",
        text(&out)
    );
    let out = t.hub_cli(&["key", "rotate", "--spoke", "a"]);
    assert!(out.status.success(), "{}", text(&out));
    t.wait_for(
        "the asked-for rotation of a",
        Duration::from_secs(30),
        || {
            let _ = t.ping(&t.ns_a, HUB_TUNNEL, 1);
            t.agreed_epoch("a", &net.a_socket).is_some_and(|k| k > ka)
        },
    );
    let c_socket = t.spoke_socket("c");
    let c = start_spoke_with(
        t,
        &t.ns_b,
        &c_dir,
        &c_socket,
        &[],
        &["--interface", "tsk-c"],
    );
    t.wait_for("spoke c to reach a", Duration::from_secs(30), || {
        ping_via(t, &t.ns_b, "tsk-c", A_TUNNEL)
    });
    wait_agreed_via(
        t,
        "c",
        &c_socket,
        &t.ns_b,
        Some("tsk-c"),
        Duration::from_secs(20),
    );
    t.sigterm(&c);

    // A restart after the episode: the store opens and holds everything.
    let hub = net.hub.clone();
    net.topo.kill9(&hub);
    net.restart_hub();
    recovered(&net, "the restart after a full disk");
    let t = &net.topo;
    let list = t.spoke_list();
    for name in ["a", "b", "c"] {
        assert!(
            list.iter()
                .any(|s| s["name"] == name && s["state"] == "active"),
            "spoke {name} lost: {list:?}"
        );
    }
    let users: Value = serde_json::from_slice(&t.hub_cli(&["user", "list", "--json"]).stdout)
        .unwrap_or(Value::Null);
    for id in ["alice", "bob"] {
        assert!(
            users
                .as_array()
                .is_some_and(|u| u.iter().filter(|u| u["id"] == id).count() == 1),
            "user {id} lost: {users}"
        );
    }
    let alice = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == "alice"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(alice["must_change_password"], false, "{alice}");
    assert_eq!(alice["logged_in_on"], serde_json::json!(["a"]), "{alice}");
    drop(net);
    drop(disk);
}
