//! Helpers for the crash, full-disk and clock tests: a seeded generator for
//! the moments faults strike, and queries of what hub and spokes agree on.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A small deterministic generator (xorshift64) for the moments at which
/// fault tests strike. The seed comes from `TASUKI_FAULT_SEED` when set (to
/// repeat a failed run), from the clock otherwise; it is printed either way.
#[derive(Clone, Debug)]
pub struct FaultRng {
    /// The seed this generator started from.
    pub seed: u64,
    state: u64,
}

impl FaultRng {
    /// A generator for `test`, seeded as described on the type; prints the seed.
    pub fn new(test: &str) -> Self {
        let seed = std::env::var("TASUKI_FAULT_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: fault seed {seed} (set TASUKI_FAULT_SEED={seed} to repeat)");
        Self::from_seed(seed)
    }

    /// A generator with a fixed seed.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            seed,
            state: seed | 1,
        }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// A duration between `lo` and `hi` milliseconds (inclusive of `lo`).
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        let span = hi.saturating_sub(lo).max(1);
        Duration::from_millis(lo + self.next_u64() % span)
    }
}

impl Topology {
    /// Runs `args` in `ns` with `input` on standard input, killed after
    /// `limit` (the test then fails); returns its output whatever its status.
    pub fn exec_stdin<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        args: &[S],
        input: &str,
        limit: Duration,
    ) -> Output {
        let shown = show(args);
        let mut child = self
            .command(ns, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{shown}` in {ns}: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            // A child that exits early closes its end: not an error here.
            let _ = stdin.write_all(input.as_bytes());
        }
        self.finish(child, &shown, ns, limit)
    }

    /// `tasuki-hub key status --json`: one object per link (empty when the
    /// hub does not answer).
    pub fn hub_links(&self) -> Vec<Value> {
        let out = self.hub_cli(&["key", "status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The hub's key status of the link to spoke `name`, if it has one.
    pub fn hub_link(&self, name: &str) -> Option<Value> {
        self.hub_links().into_iter().find(|l| l["spoke"] == name)
    }

    /// `tasuki-hub spoke list --json`: one object per spoke (empty when the
    /// hub does not answer).
    pub fn spoke_list(&self) -> Vec<Value> {
        let out = self.hub_cli(&["spoke", "list", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The state (`active`, `pending`, `revoked`, …) the hub records for
    /// spoke `name`, if it knows it.
    pub fn spoke_state(&self, name: &str) -> Option<String> {
        self.spoke_list()
            .into_iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"].as_str().map(str::to_owned))
    }

    /// The epoch both sides of spoke `name`'s link use, when they agree: the
    /// hub's confirmed epoch equals its newest issued one (no rotation under
    /// way) and the spoke's epoch carrying traffic. `None` while they differ
    /// or either side does not answer.
    pub fn agreed_epoch(&self, name: &str, socket: &Path) -> Option<u64> {
        let link = self.hub_link(name)?;
        let hub = link["epoch"].as_u64()?;
        if link["latest"].as_u64()? != hub || hub == 0 {
            return None;
        }
        let out = self.spoke_cli(socket, &["status", "--json"]);
        let spoke: Value = serde_json::from_slice(&out.stdout).ok()?;
        (spoke["epoch"].as_u64()? == hub).then_some(hub)
    }
}

impl TwoSpokes {
    /// Like [`TwoSpokes::up`], but runs `prepare` on the fresh topology
    /// before the hub is initialised (to mount its state directory, say) and
    /// returns what it returned beside the network.
    pub fn up_with<G>(prepare: impl FnOnce(&Topology) -> G) -> (Self, G) {
        Self::up_with_hub_args(prepare, &[])
    }

    /// Like [`TwoSpokes::up_with`], with more arguments for `tasuki-hub run`.
    pub fn up_with_hub_args<G>(
        prepare: impl FnOnce(&Topology) -> G,
        hub_args: &[&str],
    ) -> (Self, G) {
        let topo = Topology::new();
        let guard = prepare(&topo);
        topo.hub_init();
        let hub = topo.start_hub_with(hub_args);
        let (a_dir, b_dir) = (topo.spoke_dir("a"), topo.spoke_dir("b"));
        let (a_socket, b_socket) = (topo.spoke_socket("a"), topo.spoke_socket("b"));
        let inv_a = topo.invite_with("a", &["--pre-approved", "--service"]);
        topo.enrol_ok(&topo.ns_a, &inv_a, &a_dir);
        let inv_b = topo.invite_with("b", &["--pre-approved", "--service"]);
        topo.enrol_ok(&topo.ns_b, &inv_b, &b_dir);
        let a = topo.start_spoke(&topo.ns_a, &a_dir, &a_socket);
        let b = topo.start_spoke(&topo.ns_b, &b_dir, &b_socket);
        let net = TwoSpokes {
            topo,
            hub,
            a,
            b,
            a_dir,
            b_dir,
            a_socket,
            b_socket,
        };
        net.wait_tunnel_up(Duration::from_secs(30));
        (net, guard)
    }
}
