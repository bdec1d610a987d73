//! Hardening with the real daemons: state directories stay private through
//! enrolment, traffic, rotation and restarts (and are made private again at
//! start); transport data messages are padded to 16 bytes on the wire; every
//! refusal a person can meet reads as one sentence.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::text;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tasuki_core::invitation::{Invitation, InvitationId};
use tasuki_core::keys::StaticKey;
use tasuki_netns_tests::{
    binaries, skip_unless_root, Proc, Topology, TwoSpokes, B_TUNNEL, HUB_ENDPOINT, HUB_TUNNEL,
};

/// Returns from the test (after saying why) unless running as root.
macro_rules! require_root {
    ($name:literal) => {
        if skip_unless_root($name) {
            return;
        }
    };
}

/// What the hub logs for each path it had to make private at start.
const MADE_PRIVATE: &str = "was readable by other users";

// ----- state files are private -----

/// What a walk of a state directory found.
#[derive(Default)]
struct Walk {
    files: usize,
    dirs: usize,
    /// Paths with the wrong mode, as `PATH (KIND, mode MODE)`.
    bad: Vec<String>,
    /// Paths that are neither regular files nor directories.
    other: Vec<String>,
}

/// Walks `dir` (itself included): every regular file must be 0600, every
/// directory 0700. A path that vanished during the walk (a daemon runs) is
/// skipped.
fn walk_modes(dir: &Path) -> Walk {
    let mut walk = Walk::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                walk.bad
                    .push(format!("{} (cannot stat: {e})", path.display()));
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            walk.dirs += 1;
            if mode != 0o700 {
                walk.bad
                    .push(format!("{} (directory, mode {mode:04o})", path.display()));
            }
            match std::fs::read_dir(&path) {
                Ok(entries) => todo.extend(entries.flatten().map(|e| e.path())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => walk
                    .bad
                    .push(format!("{} (cannot list: {e})", path.display())),
            }
        } else if meta.is_file() {
            walk.files += 1;
            if mode != 0o600 {
                walk.bad
                    .push(format!("{} (file, mode {mode:04o})", path.display()));
            }
        } else {
            walk.other
                .push(format!("{} (mode {mode:04o})", path.display()));
        }
    }
    walk.bad.sort();
    walk
}

/// Fails the test with every offending path of every directory in `dirs`.
fn assert_private(t: &Topology, when: &str, dirs: &[PathBuf]) {
    let mut bad = Vec::new();
    for dir in dirs {
        let walk = walk_modes(dir);
        eprintln!(
            "{when}: {} holds {} files and {} directories{}",
            dir.display(),
            walk.files,
            walk.dirs,
            if walk.other.is_empty() {
                String::new()
            } else {
                format!(", and also {}", walk.other.join(", "))
            }
        );
        if walk.files < 2 {
            bad.push(format!(
                "{} holds only {} files: not a state directory?",
                dir.display(),
                walk.files
            ));
        }
        bad.extend(walk.bad);
    }
    if !bad.is_empty() {
        t.fail(&format!(
            "{when}: not private (files must be 0600, directories 0700):\n  {}",
            bad.join("\n  ")
        ));
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// The first regular file under `dir` (sorted), for tampering with.
fn some_file_under(dir: &Path) -> PathBuf {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    entries
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no file under {}", dir.display()))
}

/// What process `p` wrote to its log since it was last started.
fn log_since_start(p: &Proc) -> String {
    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
    match log.rfind("=== tasuki-netns-tests: starting") {
        Some(i) => log[i..].to_string(),
        None => log,
    }
}

/// Waits until both spokes' links carry traffic under an epoch past
/// `before` (pinging the hub from each meanwhile) and returns the new ones.
fn wait_past(net: &TwoSpokes, before: (u64, u64)) -> (u64, u64) {
    let t = &net.topo;
    let mut now = (0, 0);
    t.wait_for(
        &format!("both links to carry traffic past epochs {before:?}"),
        Duration::from_secs(30),
        || {
            let _ = t.ping(&t.ns_a, HUB_TUNNEL, 1);
            let _ = t.ping(&t.ns_b, HUB_TUNNEL, 1);
            let a = t.agreed_epoch("a", &net.a_socket).unwrap_or(0);
            let b = t.agreed_epoch("b", &net.b_socket).unwrap_or(0);
            now = (a, b);
            a > before.0 && b > before.1
        },
    );
    now
}

/// After enrolment, traffic, a rotation and restarts, every file in the
/// hub's and the spokes' state directories is 0600 and every directory
/// 0700; a store file and the state directory made readable while the hub
/// is stopped are private again once it starts, with a warning in its log
/// (the same for a spoke).
#[test]
fn state_files_are_private() {
    require_root!("state_files_are_private");
    let mut net = TwoSpokes::up();
    let dirs = [net.hub_dir(), net.a_dir.clone(), net.b_dir.clone()];
    assert_private(&net, "after enrolment", &dirs);

    assert!(net.ping(&net.ns_a, HUB_TUNNEL, 3), "a cannot ping the hub");
    assert!(net.ping(&net.ns_a, B_TUNNEL, 3), "a cannot ping b");

    let set = net.hub_cli(&["key", "policy", "set", "--interval", "off", "--grace", "1s"]);
    assert!(set.status.success(), "{}", text(&set));
    let before = wait_past(&net, (0, 0));
    let rotate = net.hub_cli(&["key", "rotate", "--all"]);
    assert!(rotate.status.success(), "{}", text(&rotate));
    let after = wait_past(&net, before);
    eprintln!("rotated: epochs {before:?} -> {after:?}");
    assert!(
        net.ping(&net.ns_a, B_TUNNEL, 3),
        "a cannot ping b after rotation"
    );
    assert_private(&net, "after traffic and a rotation", &dirs);

    let status = net.sigterm(&net.hub.clone());
    assert!(status.success(), "the hub exited with {status} on SIGTERM");
    net.restart_hub();
    let status = net.sigterm(&net.a.clone());
    assert!(status.success(), "spoke a exited with {status} on SIGTERM");
    net.restart_a();
    net.wait_tunnel_up(Duration::from_secs(30));
    net.wait_for(
        "a to ping b after the restarts",
        Duration::from_secs(30),
        || net.ping(&net.ns_a, B_TUNNEL, 1),
    );
    assert_private(&net, "after restarts of hub and spoke a", &dirs);
    for p in [&net.hub, &net.a, &net.b] {
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        assert!(
            !log.contains(MADE_PRIVATE),
            "{} found its own state readable by others (it wrote it so):\n{log}",
            p.name
        );
    }

    // Made readable behind the daemons' backs, while they are stopped.
    let store_file = some_file_under(&net.hub_dir().join("store"));
    let spoke_file = some_file_under(&net.a_dir.join("store"));
    let status = net.sigterm(&net.hub.clone());
    assert!(status.success(), "the hub exited with {status} on SIGTERM");
    let status = net.sigterm(&net.a.clone());
    assert!(status.success(), "spoke a exited with {status} on SIGTERM");
    let tampered = [
        (net.hub_dir(), 0o755, 0o700),
        (net.hub_dir().join("store"), 0o755, 0o700),
        (store_file.clone(), 0o644, 0o600),
        (net.a_dir.clone(), 0o755, 0o700),
        (spoke_file.clone(), 0o644, 0o600),
    ];
    for (path, loose, _) in &tampered {
        chmod(path, *loose);
        assert_eq!(mode_of(path), *loose, "{}", path.display());
    }
    net.restart_hub();
    net.restart_a();
    let mut wrong = Vec::new();
    for (path, _, private) in &tampered {
        let mode = mode_of(path);
        if mode != *private {
            wrong.push(format!(
                "{} is {mode:04o}, not {private:04o}",
                path.display()
            ));
        }
    }
    let hub_log = log_since_start(&net.hub);
    let a_log = log_since_start(&net.a);
    for (path, _, _) in &tampered {
        let (who, log) = if path.starts_with(net.hub_dir()) {
            ("hub", &hub_log)
        } else {
            ("spoke a", &a_log)
        };
        let warned = log
            .lines()
            .any(|l| l.contains(MADE_PRIVATE) && l.contains(&*path.to_string_lossy()));
        if !warned {
            wrong.push(format!(
                "the {who}'s log has no {MADE_PRIVATE:?} warning naming {}",
                path.display()
            ));
        }
    }
    if !wrong.is_empty() {
        net.fail(&format!(
            "made readable while stopped, not fixed at start:\n  {}",
            wrong.join("\n  ")
        ));
    }
    assert_private(&net, "after the start that tightened them", &dirs);
    net.wait_tunnel_up(Duration::from_secs(30));
}

// ----- padding on the wire -----

/// The UDP datagrams of a pcap file: (source port, destination port,
/// payload). Link types Ethernet (1), raw IP (101), Linux cooked (113) and
/// Linux cooked v2 (276); IPv4 only; later fragments skipped. A record cut
/// short at the end (the capture was stopped mid-write) is ignored.
fn udp_datagrams(pcap: &[u8]) -> Result<Vec<(u16, u16, Vec<u8>)>, String> {
    if pcap.len() < 24 {
        return Err(format!("{} bytes: no pcap global header", pcap.len()));
    }
    let magic = [pcap[0], pcap[1], pcap[2], pcap[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        other => return Err(format!("not a pcap file (magic {other:02x?})")),
    };
    let u32_at = |i: usize| {
        let b = [pcap[i], pcap[i + 1], pcap[i + 2], pcap[i + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link = u32_at(20) & 0xffff;
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32_at(at + 8) as usize;
        at += 16;
        if at + caplen > pcap.len() {
            break;
        }
        let frame = &pcap[at..at + caplen];
        at += caplen;
        let be16 = |b: &[u8], i: usize| b.get(i..i + 2).map(|x| u16::from_be_bytes([x[0], x[1]]));
        let ip = match link {
            1 => {
                let (mut kind, mut start) = (be16(frame, 12), 14);
                if kind == Some(0x8100) {
                    (kind, start) = (be16(frame, 16), 18);
                }
                (kind == Some(0x0800)).then(|| &frame[start.min(frame.len())..])
            }
            101 => Some(frame),
            113 => (be16(frame, 14) == Some(0x0800)).then(|| &frame[16.min(frame.len())..]),
            276 => (be16(frame, 0) == Some(0x0800)).then(|| &frame[20.min(frame.len())..]),
            other => return Err(format!("unexpected link type {other}")),
        };
        let Some(ip) = ip else { continue };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let fragment_offset = be16(ip, 6).unwrap_or(0) & 0x1fff;
        if fragment_offset != 0 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let Some(udp) = ip.get(ihl..) else { continue };
        if udp.len() < 8 {
            continue;
        }
        let (sport, dport) = (be16(udp, 0).unwrap_or(0), be16(udp, 2).unwrap_or(0));
        let len = usize::from(be16(udp, 4).unwrap_or(0));
        if len < 8 {
            continue;
        }
        // The whole payload is captured (default snapshot length); its
        // length is the UDP header's.
        let payload = udp[8..len.min(udp.len())].to_vec();
        if payload.len() != len - 8 {
            return Err(format!(
                "a datagram of {} payload bytes was captured as {}",
                len - 8,
                payload.len()
            ));
        }
        out.push((sport, dport, payload));
    }
    Ok(out)
}

/// Pings of many sizes from spoke a to the hub and (relayed) to spoke b,
/// captured on the hub's WAN interface: every WireGuard transport data
/// message carries a multiple of 16 bytes of encrypted packet.
#[test]
fn transport_messages_are_padded_to_sixteen() {
    require_root!("transport_messages_are_padded_to_sixteen");
    const SIZES: [u32; 12] = [0, 1, 3, 7, 15, 16, 17, 50, 100, 333, 1000, 1300];
    let net = TwoSpokes::up();
    let t = &net.topo;
    // No rotation during the capture (not needed, but keeps it quiet).
    let set = t.hub_cli(&["key", "policy", "set", "--interval", "off"]);
    assert!(set.status.success(), "{}", text(&set));
    t.wait_for("a to ping b", Duration::from_secs(30), || {
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });

    let pcap = t.dir().join("hub-udp.pcap");
    let pcap_arg = pcap.to_string_lossy().into_owned();
    let port = HUB_ENDPOINT.rsplit(':').next().unwrap_or("51820");
    // `timeout` bounds it should the kill below never come; packets go to
    // the file as they come (`--immediate-mode -U`), not in blocks lost at
    // the kill; `-Z root` keeps tcpdump from dropping to a user that cannot
    // write the file.
    let dump = t.spawn(
        &t.ns_hub,
        &[
            "timeout",
            "120",
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            &pcap_arg,
            "udp",
            "port",
            port,
        ],
        &t.dir().join("tcpdump.log"),
    );
    t.wait_for("tcpdump to listen", Duration::from_secs(15), || {
        t.must_be_alive(&dump);
        std::fs::read_to_string(&dump.log)
            .unwrap_or_default()
            .contains("listening on")
    });
    let mut failed = Vec::new();
    for size in SIZES {
        let s = size.to_string();
        for to in [HUB_TUNNEL, B_TUNNEL] {
            let out = t.exec(
                &t.ns_a,
                &[
                    "ping", "-q", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", &s, to,
                ],
            );
            if !out.status.success() {
                failed.push(format!("ping -s {size} {to}: {}", text(&out).trim()));
            }
        }
    }
    // Let the last replies reach the file before tcpdump stops.
    std::thread::sleep(Duration::from_millis(500));
    t.sigterm(&dump);
    assert!(failed.is_empty(), "pings failed:\n{}", failed.join("\n"));

    let bytes = std::fs::read(&pcap).unwrap_or_else(|e| panic!("cannot read {pcap_arg}: {e}"));
    let datagrams = udp_datagrams(&bytes).unwrap_or_else(|e| panic!("{pcap_arg}: {e}"));
    let port: u16 = port.parse().expect("the hub's port");
    let (mut data, mut keepalives, mut from_hub, mut to_hub) = (0usize, 0usize, 0usize, 0usize);
    let mut by_len: BTreeMap<usize, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (sport, dport, payload) in &datagrams {
        if payload.len() < 4 || payload[..4] != [4, 0, 0, 0] {
            continue; // handshakes and cookies
        }
        let dir = if *sport == port {
            "hub→spoke"
        } else {
            "spoke→hub"
        };
        match payload.len() {
            32 => keepalives += 1,
            n if n < 32 => bad.push(format!("{dir}: a data message of only {n} bytes")),
            n => {
                data += 1;
                *by_len.entry(n - 32).or_default() += 1;
                if *sport == port {
                    from_hub += 1;
                }
                if *dport == port {
                    to_hub += 1;
                }
                if (n - 32) % 16 != 0 {
                    bad.push(format!(
                        "{dir} ({sport}→{dport}): {n} bytes, {} of packet, not a multiple of 16",
                        n - 32
                    ));
                }
            }
        }
    }
    eprintln!(
        "checked {data} data messages ({to_hub} to the hub, {from_hub} from it) and {keepalives} \
         keepalives among {} datagrams; encrypted packet lengths (bytes: count): {by_len:?}",
        datagrams.len()
    );
    assert!(
        bad.is_empty(),
        "{} unpadded messages, the first ones:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
    // Every ping got a reply: at least request and reply to the hub, and
    // the four legs to b and back through the hub, per size.
    let least = SIZES.len() * 6;
    assert!(
        data >= least,
        "only {data} data messages captured, expected at least {least}"
    );
    assert!(
        to_hub >= SIZES.len() * 3 && from_hub >= SIZES.len() * 3,
        "expected data messages both ways ({to_hub} to the hub, {from_hub} from it)"
    );
    // The big pings were captured too (1300 + 8 + 20 bytes of packet).
    let largest = by_len.keys().next_back().copied().unwrap_or(0);
    assert!(largest >= 1328, "largest packet seen {largest} bytes");
}

// ----- refusals -----

/// Every refusal code as `Debug` prints it: none may show in a message.
const CODES: [&str; 10] = [
    "HandshakeFailed",
    "UnknownInvitation",
    "InvitationUsed",
    "InvitationExpired",
    "UnknownSpoke",
    "Pending",
    "Revoked",
    "VersionMismatch",
    "ProtocolViolation",
    "Internal",
];

/// What is wrong with `msg` as one readable sentence carrying `reason`
/// exactly once (empty when nothing is).
fn sentence_problems(msg: &str, reason: &str) -> Vec<String> {
    let mut p = Vec::new();
    let count = msg.matches(reason).count();
    if count != 1 {
        p.push(format!("says {reason:?} {count} times, not once"));
    }
    for code in CODES {
        if msg.contains(&format!("({code})")) {
            p.push(format!("carries the code ({code})"));
        }
    }
    // Any other `(CamelCase)` is a Debug-printed enum too.
    for (i, _) in msg.match_indices('(') {
        let inner: String = msg[i + 1..].chars().take_while(|c| *c != ')').collect();
        let camel = inner.len() > 1
            && inner.starts_with(|c: char| c.is_ascii_uppercase())
            && inner.chars().all(|c| c.is_ascii_alphanumeric())
            && inner.chars().skip(1).any(|c| c.is_ascii_uppercase());
        if camel && msg[i + 1 + inner.len()..].starts_with(')') {
            p.push(format!("carries what looks like an enum code ({inner})"));
        }
    }
    if msg.trim().is_empty() {
        p.push("is empty".into());
    }
    if msg.contains('\n') {
        p.push("spans several lines".into());
    }
    // A word, or the path a message is about.
    if !msg.starts_with(|c: char| c.is_alphabetic() || c == '/') {
        p.push("does not start with a word".into());
    }
    if msg.trim_end().ends_with([':', ';', ',']) {
        p.push("ends in the middle".into());
    }
    // The clauses of one sentence go on in lower case; a capital after a
    // colon is another program's message pasted in as it was.
    for sep in [": ", "; "] {
        for (i, _) in msg.match_indices(sep) {
            let word: String = msg[i + sep.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            let mut chars = word.chars();
            if let (Some(first), Some(second)) = (chars.next(), chars.next()) {
                if first.is_uppercase() && second.is_lowercase() {
                    p.push(format!(
                        "goes on with a capital after {sep:?} ({word:?}…): another message pasted in"
                    ));
                }
            }
        }
    }
    if msg.chars().count() > 300 {
        p.push(format!("is {} characters long", msg.chars().count()));
    }
    for artefact in [
        "panicked",
        "Caused by",
        "Error:",
        "Refusal {",
        "Some(",
        "\\\"",
        "  ",
        ": :",
    ] {
        if msg.contains(artefact) {
            p.push(format!("contains {artefact:?}"));
        }
    }
    // A phrase said twice ("refused: X: X", a cause repeating its context).
    let words: Vec<String> = msg
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for w in words.windows(4) {
        if !seen.insert(w.to_vec()) {
            p.push(format!("repeats the phrase {:?}", w.join(" ")));
            break;
        }
    }
    p
}

/// The messages a person reads about one refused action, and the checks.
struct Refusals {
    /// Every message checked, as `CASE: MESSAGE`.
    checked: Vec<String>,
    /// Every problem found, as `CASE: PROBLEM in MESSAGE`.
    problems: Vec<String>,
}

impl Refusals {
    fn new() -> Self {
        Self {
            checked: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Checks one message.
    fn check(&mut self, case: &str, msg: &str, reason: &str) {
        eprintln!("{case}: {msg}");
        self.checked.push(format!("{case}: {msg}"));
        for problem in sentence_problems(msg, reason) {
            self.problems.push(format!("{case}: {problem}, in {msg:?}"));
        }
    }

    /// Checks a failed command: it must have failed, and its last stderr line
    /// (`PROGRAM: MESSAGE`, after any log lines) is the message.
    fn check_failed(&mut self, case: &str, program: &str, out: &Output, reason: &str) {
        if out.status.success() {
            self.problems
                .push(format!("{case}: succeeded instead: {}", text(out).trim()));
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let prefix = format!("{program}: ");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&prefix)).collect();
        match lines.as_slice() {
            [line] => self.check(case, &line[prefix.len()..], reason),
            _ => self.problems.push(format!(
                "{case}: expected one line starting {prefix:?} on stderr, got {err:?}"
            )),
        }
        if err.matches(reason).count() > 1 {
            self.problems.push(format!(
                "{case}: stderr says {reason:?} more than once: {err:?}"
            ));
        }
    }

    /// Checks what a running spoke shows for a refusal: `status --json`'s
    /// last error, the `status` text's "last error:" line and the log line
    /// of the control channel, after waiting (bounded) for `reason` in its
    /// status.
    fn check_running(
        &mut self,
        t: &Topology,
        case: &str,
        spoke: &Proc,
        socket: &Path,
        reason: &str,
    ) {
        let mut last = String::new();
        t.wait_for(
            &format!("{case}: spoke {} to report {reason:?}", spoke.name),
            Duration::from_secs(30),
            || {
                t.must_be_alive(spoke);
                let s = t.spoke_status_json(socket);
                last = s["last_error"].as_str().unwrap_or_default().to_string();
                last.contains(reason)
            },
        );
        self.check(&format!("{case} (status --json)"), &last, reason);
        let out = t.spoke_cli(socket, &["status"]);
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        match shown
            .lines()
            .find_map(|l| l.trim().strip_prefix("last error:"))
        {
            Some(line) => self.check(&format!("{case} (status)"), line.trim(), reason),
            None => self.problems.push(format!(
                "{case}: `tasuki-spoke status` shows no last error: {shown:?}"
            )),
        }
        let log = std::fs::read_to_string(&spoke.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(reason)).collect();
        if lines.is_empty() {
            self.problems.push(format!(
                "{case}: spoke {}'s log never says {reason:?}",
                spoke.name
            ));
        }
        for line in lines {
            match line.split_once(" error=") {
                Some((_, msg)) => self.check(&format!("{case} (log)"), msg.trim(), reason),
                None => self.check(&format!("{case} (log line)"), line, reason),
            }
        }
    }
}

/// `tasuki-spoke enrol INVITATION --state-dir DIR EXTRA…` in `ns`.
fn enrol_extra(t: &Topology, ns: &str, invitation: &str, dir: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        binaries().spoke.as_os_str(),
        OsStr::new("enrol"),
        OsStr::new(invitation),
        OsStr::new("--state-dir"),
        dir.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    t.exec(ns, &args)
}

/// A fresh state directory `name` holding only a copy of `from`'s identity
/// key: the same device, without its enrolment.
fn same_key_dir(t: &Topology, from: &Path, name: &str) -> PathBuf {
    let dir = t.spoke_dir(name);
    std::fs::create_dir_all(&dir).expect("create a state directory");
    chmod(&dir, 0o700);
    std::fs::copy(from.join("spoke.key"), dir.join("spoke.key")).expect("copy spoke.key");
    chmod(&dir.join("spoke.key"), 0o600);
    dir
}

/// base64url without padding, as invitations are written.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Puts `copy` (made with `cp -a` while the hub was stopped) back as the
/// hub's state directory.
fn restore_hub_dir(t: &Topology, copy: &Path) {
    let dir = t.hub_dir();
    std::fs::remove_dir_all(&dir).expect("remove the hub's state directory");
    t.exec_ok(
        &t.ns_hub,
        &[
            OsStr::new("cp"),
            OsStr::new("-a"),
            copy.as_os_str(),
            dir.as_os_str(),
        ],
    );
}

/// Every refusal reachable with the real binaries, from a spoke's `enrol`,
/// `run` and `status` and from the admin's `tasuki-hub`, reads as one
/// sentence: the hub's reason once, no internal code, nothing repeated.
#[test]
fn every_refusal_is_one_sentence() {
    require_root!("every_refusal_is_one_sentence");
    let mut r = Refusals::new();
    let at_hub = format!("the hub at {HUB_ENDPOINT} refused: ");
    {
        let t = Topology::new();
        t.hub_init();
        // The hub as it was before anyone enrolled, for a spoke it forgot.
        let fresh = t.dir().join("hub-fresh");
        t.exec_ok(
            &t.ns_hub,
            &[
                OsStr::new("cp"),
                OsStr::new("-a"),
                t.hub_dir().as_os_str(),
                fresh.as_os_str(),
            ],
        );
        let mut hub = t.start_hub();
        let (a_dir, a_sock) = (t.spoke_dir("a"), t.spoke_socket("a"));
        let inv_a = t.invite_with("a", &["--pre-approved", "--service"]);
        t.enrol_ok(&t.ns_a, &inv_a, &a_dir);

        // Enrolment.
        let reason = "that invitation was already used; ask the admin for a new one";
        let out = t.enrol(&t.ns_b, &inv_a, &t.spoke_dir("used"));
        r.check_failed("used invitation", "tasuki-spoke", &out, reason);
        r.check_failed("used invitation", "tasuki-spoke", &out, &at_hub);

        let late = t.invite_with("late", &["--expires", "1s"]);
        std::thread::sleep(Duration::from_secs(2));
        let out = t.enrol(&t.ns_b, &late, &t.spoke_dir("late"));
        let reason = "that invitation has expired; ask the admin for a new one";
        r.check_failed("expired invitation", "tasuki-spoke", &out, reason);

        let good = t.invite("g", true);
        let mut flipped = good.clone().into_bytes();
        let mid = flipped.len() / 2;
        flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ASCII");
        // Checksum right, fields wrong: only a program makes that.
        let mut body = vec![0xff; 8];
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum[..4]);
        let bad_fields = format!("tasuki1-{}", base64url(&body));
        for (what, text, reason) in [
            (
                "garbled invitation (a character changed)",
                flipped.as_str(),
                "invitation is damaged",
            ),
            (
                "garbled invitation (not base64url)",
                "tasuki1-!!!!not*base64!!!!",
                "invitation is damaged",
            ),
            (
                "garbled invitation (no prefix)",
                "hello, this is not an invitation",
                "not a tasuki invitation",
            ),
            (
                "garbled invitation (bad fields)",
                bad_fields.as_str(),
                "invitation is damaged",
            ),
        ] {
            let out = t.enrol(&t.ns_b, text, &t.spoke_dir("garbled"));
            r.check_failed(what, "tasuki-spoke", &out, reason);
        }

        let mut unknown = Invitation::decode(&good).expect("the hub's invitation decodes");
        unknown.id = InvitationId::generate(&mut rand_core::OsRng);
        let out = t.enrol(&t.ns_b, &unknown.encode(), &t.spoke_dir("unknown"));
        let reason = "this hub does not know that invitation";
        r.check_failed("unknown invitation", "tasuki-spoke", &out, reason);

        let mut other_hub = Invitation::decode(&good).expect("the hub's invitation decodes");
        other_hub.hub_key = StaticKey::generate(&mut rand_core::OsRng).public();
        let out = t.enrol(&t.ns_b, &other_hub.encode(), &t.spoke_dir("other-hub"));
        r.check_failed(
            "invitation for another hub",
            "tasuki-spoke",
            &out,
            "does not hold the pinned key",
        );

        let dev = t.invite("dev", false);
        let out = enrol_extra(
            &t,
            &t.ns_b,
            &dev,
            &t.spoke_dir("dev"),
            &["--as-user", "nobody"],
        );
        r.check_failed(
            "enrolment as an unknown user",
            "tasuki-spoke",
            &out,
            "no user \"nobody\" at this hub",
        );

        // The same device (key) again, with the invitation it used and with
        // a new one.
        let c_dir = t.spoke_dir("c");
        t.enrol_ok(&t.ns_b, &t.invite("c", true), &c_dir);
        let copy = same_key_dir(&t, &c_dir, "c-copy");
        let out = t.enrol(&t.ns_b, &t.invite("c2", true), &copy);
        r.check_failed(
            "an enrolled key with another invitation",
            "tasuki-spoke",
            &out,
            "this key is already enrolled as \"c\"",
        );
        let out = t.enrol(&t.ns_b, &t.invite("c3", true), &c_dir);
        r.check_failed(
            "an enrolled state directory",
            "tasuki-spoke",
            &out,
            "is already enrolled as \"c\"",
        );

        // Waiting for approval, then denied, while running.
        let (p_dir, p_sock) = (t.spoke_dir("p"), t.spoke_socket("p"));
        let out = t.enrol(&t.ns_b, &t.invite("p", false), &p_dir);
        assert!(out.status.success(), "pending enrolment: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        r.check(
            "enrolment waiting for approval",
            said.lines().next().unwrap_or_default(),
            "waiting for the admin's approval",
        );
        let p = t.start_spoke(&t.ns_b, &p_dir, &p_sock);
        let reason = "this spoke waits for an admin's approval";
        r.check_running(&t, "pending spoke", &p, &p_sock, reason);
        let out = t.hub_cli(&["spoke", "deny", "p"]);
        assert!(out.status.success(), "deny: {}", text(&out));
        let reason = "an admin denied this spoke; it needs a fresh enrolment";
        r.check_running(&t, "denied spoke", &p, &p_sock, reason);
        let status = t.sigterm(&p);
        assert!(status.success(), "spoke p exited with {status}");

        // Admin commands the registry refuses.
        for (what, args, reason) in [
            (
                "approving an active spoke",
                &["spoke", "approve", "a"][..],
                "spoke \"a\" is active; approval needs a pending spoke",
            ),
            (
                "revoking an unknown spoke",
                &["spoke", "revoke", "nobody"][..],
                "no spoke named \"nobody\"",
            ),
            (
                "inviting a bad name",
                &["spoke", "invite", "bad name!"][..],
                "invalid spoke name \"bad name!\"",
            ),
            (
                "inviting a taken name",
                &["spoke", "invite", "a"][..],
                "the name \"a\" is already taken by a spoke or an open invitation",
            ),
            (
                "an invitation valid for no time",
                &["spoke", "invite", "z", "--expires", "0s"][..],
                "an invitation must be valid for at least one second",
            ),
        ] {
            let out = t.hub_cli(args);
            r.check_failed(what, "tasuki-hub", &out, reason);
        }

        // Revoked while running, and started again.
        let a = t.start_spoke(&t.ns_a, &a_dir, &a_sock);
        t.wait_for("spoke a to attach", Duration::from_secs(30), || {
            t.spoke_status_json(&a_sock)["control_connected"] == Value::Bool(true)
        });
        let out = t.hub_cli(&["spoke", "revoke", "a"]);
        assert!(out.status.success(), "revoke: {}", text(&out));
        let reason = "this spoke was revoked; it needs a fresh enrolment";
        r.check_running(&t, "revoked spoke", &a, &a_sock, reason);
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        let live = "an admin revoked this spoke";
        match log.lines().find(|l| l.contains(live)) {
            Some(line) => r.check(
                "revoked spoke (cut off, log)",
                line.split_once(" error=").map_or(line, |(_, m)| m).trim(),
                live,
            ),
            None => eprintln!("spoke a's log does not show the live cut-off ({live:?})"),
        }
        let status = t.sigterm(&a);
        assert!(status.success(), "spoke a exited with {status}");
        let a = t.start_spoke(&t.ns_a, &a_dir, &a_sock);
        r.check_running(&t, "revoked spoke, restarted", &a, &a_sock, reason);
        let copy = same_key_dir(&t, &a_dir, "a-copy");
        let out = t.enrol(&t.ns_a, &inv_a, &copy);
        r.check_failed(
            "a revoked key with its own invitation",
            "tasuki-spoke",
            &out,
            "this spoke was revoked",
        );
        let copy = same_key_dir(&t, &a_dir, "a-copy2");
        let out = t.enrol(&t.ns_a, &t.invite("a-again", true), &copy);
        r.check_failed(
            "a revoked key with a new invitation",
            "tasuki-spoke",
            &out,
            "this spoke's key was revoked or denied; enrol with a fresh state directory",
        );
        let status = t.sigterm(&a);
        assert!(status.success(), "spoke a exited with {status}");

        // A hub that does not know the spoke (its state from before).
        let status = t.sigterm(&hub);
        assert!(status.success(), "the hub exited with {status}");
        restore_hub_dir(&t, &fresh);
        hub = t.start_hub();
        let c_sock = t.spoke_socket("c");
        let c = t.start_spoke(&t.ns_b, &c_dir, &c_sock);
        let reason = "this spoke is not enrolled at this hub; enrol it with a new invitation";
        r.check_running(&t, "a spoke the hub does not know", &c, &c_sock, reason);
        t.must_be_alive(&hub);
    }
    {
        // A tunnel network with one address for spokes.
        let t = Topology::new();
        t.hub_init_net("10.77.0.0/30");
        let _hub = t.start_hub();
        t.enrol_ok(&t.ns_a, &t.invite("x", true), &t.spoke_dir("x"));
        let out = t.enrol(&t.ns_b, &t.invite("y", true), &t.spoke_dir("y"));
        let reason = "the tunnel network has no free address left";
        r.check_failed("a full tunnel network", "tasuki-spoke", &out, reason);
    }
    eprintln!("checked {} messages", r.checked.len());
    assert!(
        r.problems.is_empty(),
        "refusals that are not one clear sentence:\n  {}",
        r.problems.join("\n  ")
    );
}
