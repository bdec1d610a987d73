//! End-to-end test harness for tasuki: runs the real `tasuki-hub` and
//! `tasuki-spoke` binaries in Linux network namespaces.
//!
//! The layout matches `scripts/lib-netns.sh`:
//!
//! ```text
//!   wan namespace, bridge br0 (172.30.0.0/24)
//!     ├── hub      172.30.0.1   ── lan0 192.168.77.1 ── lan host 192.168.77.2
//!     ├── spoke a  172.30.0.11
//!     └── spoke b  172.30.0.12
//!   tunnel 10.77.0.0/24: hub .1, spoke a .2, spoke b .3
//! ```
//!
//! Every [`Topology`] gets its own namespace prefix (`tt{pid}x{n}`) and its
//! own temporary directory, so tests can run in parallel threads. Dropping
//! it (also while a test panics) kills every process it started, deletes its
//! namespaces and removes the directory (set `TASUKI_NETNS_KEEP=1` to keep
//! the directory and its logs for a post-mortem).
//!
//! The tests need root; [`skip_unless_root`] lets them skip cleanly
//! otherwise. The daemons are found next to the test binary (the
//! `target/debug` directory), so run `cargo build --workspace` first.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

mod cluster;
mod daemons;
mod direct;
mod faults;
mod nat;
mod procs;
mod stream;
mod tree;
pub use cluster::Etcd;
pub use daemons::TwoSpokes;
pub use direct::UPGRADE_WITHIN;
pub use faults::FaultRng;
pub use nat::{Behind, Mapping, Nat};
use procs::show;
pub use stream::{loss, Stream, Streamed, IN_FLIGHT};
pub use tree::{TreeHub, TreeSpoke};

/// The hub's address on the WAN bridge.
pub const HUB_WAN: &str = "172.30.0.1";
/// The hub's public endpoint (TCP control and UDP data).
pub const HUB_ENDPOINT: &str = "172.30.0.1:51820";
/// Spoke a's address on the WAN bridge.
pub const A_WAN: &str = "172.30.0.11";
/// Spoke b's address on the WAN bridge.
pub const B_WAN: &str = "172.30.0.12";
/// The tunnel network.
pub const TUNNEL_NET: &str = "10.77.0.0/24";
/// The IPv6 tunnel prefix every test hub has beside it.
pub const TUNNEL_NET6: &str = "fd77:1::/64";
/// The hub's IPv6 tunnel address.
pub const HUB_TUNNEL6: &str = "fd77:1::1";
/// Spoke a's IPv6 tunnel address (its IPv4 host number in the prefix).
pub const A_TUNNEL6: &str = "fd77:1::2";
/// Spoke b's IPv6 tunnel address.
pub const B_TUNNEL6: &str = "fd77:1::3";
/// The hub's tunnel address.
pub const HUB_TUNNEL: &str = "10.77.0.1";
/// Spoke a's tunnel address (first spoke enrolled).
pub const A_TUNNEL: &str = "10.77.0.2";
/// Spoke b's tunnel address (second spoke enrolled).
pub const B_TUNNEL: &str = "10.77.0.3";
/// The LAN routed behind the hub.
pub const LAN_NET: &str = "192.168.77.0/24";
/// The hub's address on the LAN.
pub const HUB_LAN: &str = "192.168.77.1";
/// The LAN host's address.
pub const LAN_HOST: &str = "192.168.77.2";

/// Default limit for one command run with [`Topology::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// How many log lines of each process a failure message shows.
const LOG_TAIL_LINES: usize = 40;

/// True when running as root (needed for namespaces, TUN and raw sockets).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true (after printing why) when `test` must be skipped because
/// the process is not root. Use as `if skip_unless_root("name") { return; }`.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    // Written to the real stderr, not through `eprintln!`, so the test
    // harness's output capture does not hide it.
    // One write, so parallel tests do not interleave their messages.
    let line =
        format!("SKIPPED {test}: the network-namespace tests need root (run them with sudo)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}

/// Paths of the binaries under test.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `tasuki-hub`.
    pub hub: PathBuf,
    /// `tasuki-spoke`.
    pub spoke: PathBuf,
    /// `tasuki-nettool` (this crate's helper).
    pub nettool: PathBuf,
}

/// Finds the binaries in the target directory of the running test
/// executable (the parent of its `deps` directory). Panics with a hint to
/// build the workspace when one is missing.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let exe = std::env::current_exe().expect("cannot find the test executable's path");
        let mut dir = exe
            .parent()
            .expect("the test executable has no parent directory")
            .to_path_buf();
        if dir.file_name() == Some(OsStr::new("deps")) {
            dir.pop();
        }
        let find = |name: &str| {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{name} not found at {}: run `cargo build --workspace` first",
                path.display()
            );
            path
        };
        Binaries {
            hub: find("tasuki-hub"),
            spoke: find("tasuki-spoke"),
            nettool: find("tasuki-nettool"),
        }
    })
}

/// Runs `tasuki-spoke ARGS --socket SOCK` with `input` on its standard
/// input (passwords for `--password-stdin`); the control socket is a file,
/// reachable from the test's own namespace.
pub fn spoke_stdin(socket: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(&binaries().spoke)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tasuki-spoke");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for tasuki-spoke")
}

/// The value of series `series` (its name with labels) in Prometheus
/// text, 0 when it is missing.
pub fn metric_sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A command's standard output and error, as one text for messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A process started with [`Topology::spawn`]; the topology owns the
/// process itself and kills it on drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    /// Short name for messages (the log file's stem).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// A set of network namespaces wired like `scripts/lib-netns.sh`, plus a
/// temporary state directory and the processes started in them.
pub struct Topology {
    /// Namespace name prefix, unique per topology.
    pub prefix: String,
    /// The switch namespace holding bridge `br0`.
    pub ns_wan: String,
    /// The hub's namespace.
    pub ns_hub: String,
    /// Spoke a's namespace.
    pub ns_a: String,
    /// Spoke b's namespace.
    pub ns_b: String,
    /// The LAN host's namespace.
    pub ns_lan: String,
    dir: PathBuf,
    created: Vec<String>,
    children: Mutex<Vec<(Proc, Child)>>,
    logs: Mutex<Vec<PathBuf>>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// Creates the namespaces, links and addresses. Panics (after cleaning
    /// up what it made) if any `ip` command fails.
    pub fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Fail on missing binaries before making anything.
        binaries();
        remove_stale_namespaces();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("tt{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("tasuki-netns-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut t = Topology {
            ns_wan: format!("{prefix}-wan"),
            ns_hub: format!("{prefix}-hub"),
            ns_a: format!("{prefix}-a"),
            ns_b: format!("{prefix}-b"),
            ns_lan: format!("{prefix}-lan"),
            prefix,
            dir,
            created: Vec::new(),
            children: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
        };
        t.build();
        t
    }

    fn build(&mut self) {
        let all = [
            self.ns_wan.clone(),
            self.ns_hub.clone(),
            self.ns_a.clone(),
            self.ns_b.clone(),
            self.ns_lan.clone(),
        ];
        for ns in &all {
            ip(&["netns", "add", ns]);
            self.created.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let wan = self.ns_wan.as_str();
        ip(&["-n", wan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", wan, "link", "set", "br0", "up"]);
        // Links are created directly inside their namespaces, so their
        // names cannot clash with other topologies or the host.
        for (ns, host, port) in [
            (&self.ns_hub, "172.30.0.1/24", "wh"),
            (&self.ns_a, "172.30.0.11/24", "wa"),
            (&self.ns_b, "172.30.0.12/24", "wb"),
        ] {
            ip(&[
                "link", "add", port, "netns", wan, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ]);
            ip(&["-n", wan, "link", "set", port, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", host, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        let (hub, lan) = (self.ns_hub.as_str(), self.ns_lan.as_str());
        ip(&[
            "link", "add", "lan0", "netns", hub, "type", "veth", "peer", "name", "eth0", "netns",
            lan,
        ]);
        ip(&["-n", hub, "addr", "add", "192.168.77.1/24", "dev", "lan0"]);
        ip(&["-n", hub, "link", "set", "lan0", "up"]);
        ip(&["-n", lan, "addr", "add", "192.168.77.2/24", "dev", "eth0"]);
        ip(&["-n", lan, "link", "set", "eth0", "up"]);
        ip(&["-n", lan, "route", "add", TUNNEL_NET, "via", HUB_LAN]);
        ip(&[
            "netns",
            "exec",
            hub,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }

    /// The topology's temporary directory (state dirs, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Calls `check` every 150 ms until it returns true; after `timeout`
    /// fails the test with `what` and the tail of every process log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if check() {
                return;
            }
            if start.elapsed() >= timeout {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Panics with `msg` followed by the tail of every process log.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.log_tails());
    }

    /// Pings `addr` from `ns` with `ping -c count -i 0.2 -W 1`; true if any
    /// reply came back (ping's own exit status).
    pub fn ping(&self, ns: &str, addr: &str, count: u32) -> bool {
        let count = count.to_string();
        self.exec(
            ns,
            &[
                "ping", "-q", "-n", "-c", &count, "-i", "0.2", "-W", "1", addr,
            ],
        )
        .status
        .success()
    }

    /// Runs `tasuki-nettool ARGS` in `ns` (see its usage) and returns the
    /// JSON line it printed; fails the test if it fails.
    pub fn nettool<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Value {
        let mut full: Vec<&OsStr> = vec![binaries().nettool.as_os_str()];
        full.extend(args.iter().map(|a| a.as_ref()));
        let out = self.exec_ok(ns, &full);
        parse_json(self, "tasuki-nettool", &out)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *lock(&self.children));
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.created.iter().rev() {
            kill_namespace_pids(ns);
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "warning: cannot delete namespace {ns}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("warning: cannot run `ip netns del {ns}`: {e}"),
            }
        }
        if std::env::var_os("TASUKI_NETNS_KEEP").is_some() {
            eprintln!("keeping {} (TASUKI_NETNS_KEEP is set)", self.dir.display());
        } else {
            // A test may have mounted something inside (a small tmpfs for a
            // full disk); the directory cannot go while it is mounted.
            for mount in mounts_under(&self.dir) {
                let _ = Command::new("umount").arg("-l").arg(&mount).output();
            }
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("warning: cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// Mount points at or below `dir` (from /proc/self/mounts), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

// ----- helpers -----

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock must not stop the clean-up.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `ip ARGS` in the current namespace; panics on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip`: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn kill_namespace_pids(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<libc::pid_t>() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Deletes namespaces `tt{pid}x{n}-*` left behind by test processes that no
/// longer exist (e.g. killed before their clean-up ran).
fn remove_stale_namespaces() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = stale_owner(name) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                kill_namespace_pids(name);
                let _ = Command::new("ip").args(["netns", "del", name]).output();
                eprintln!("removed stale namespace {name}");
            }
        }
    });
}

/// The pid in a name of the form `tt{pid}x{n}-{wan,hub,a,b,lan,natI,cI}`.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("tt")?;
    let (prefix, role) = rest.split_once('-')?;
    let kind = role.trim_end_matches(|c: char| c.is_ascii_digit());
    if !["wan", "hub", "a", "b", "lan", "nat", "c"].contains(&kind) {
        return None;
    }
    let (pid, n) = prefix.split_once('x')?;
    if pid.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The last line of `text` that parses as JSON (the CLIs pretty-print, so
/// the whole text is tried first).
fn parse_json(t: &Topology, what: &str, text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text.trim()) {
        return v;
    }
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| t.fail(&format!("{what} printed no JSON: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::stale_owner;

    #[test]
    fn stale_names() {
        assert_eq!(stale_owner("tt123x4-hub"), Some(123));
        assert_eq!(stale_owner("tt123x45-lan"), Some(123));
        assert_eq!(stale_owner("tt123x4-nat0"), Some(123));
        assert_eq!(stale_owner("tt123x4-c3"), Some(123));
        assert_eq!(stale_owner("tt123x4-other"), None);
        assert_eq!(stale_owner("smk-hub"), None);
        assert_eq!(stale_owner("tt123-hub"), None);
        assert_eq!(stale_owner("ttabcx1-a"), None);
    }
}

/// Files under `/etc/netns/NS/` (`hosts`, `resolv.conf`), which `ip netns
/// exec` shows in place of `/etc/...` inside NS; the directories go on
/// drop, even when a test fails.
#[derive(Default)]
pub struct NetnsEtcFiles(Vec<PathBuf>);

impl NetnsEtcFiles {
    /// Writes `/etc/netns/NS/NAME` with `content`.
    pub fn write(&mut self, ns: &str, name: &str, content: &str) {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        if !self.0.contains(&dir) {
            self.0.push(dir.clone());
        }
        std::fs::write(dir.join(name), content).expect("write /etc/netns/NS/NAME");
    }
}

impl Drop for NetnsEtcFiles {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("cannot remove {}: {e}", dir.display());
            }
        }
    }
}
