//! The tasuki daemons in a [`Topology`]: the hub and spokes started, driven
//! through their CLIs and read back as JSON; and [`TwoSpokes`], the
//! starting point of most tests.

use super::*;

impl Topology {
    // ----- hub -----

    /// The hub's state directory.
    pub fn hub_dir(&self) -> PathBuf {
        self.dir.join("hub")
    }

    /// The hub's admin socket.
    pub fn hub_socket(&self) -> PathBuf {
        self.dir.join("hub.sock")
    }

    /// The hub's log file.
    pub fn hub_log(&self) -> PathBuf {
        self.dir.join("hub.log")
    }

    /// `tasuki-hub init` with the standard endpoint, tunnel net and LAN
    /// route; fails the test if it fails. Returns its stdout.
    pub fn hub_init(&self) -> String {
        self.hub_init_net(TUNNEL_NET)
    }

    /// [`Topology::hub_init`] with another tunnel network (a small one, to
    /// run out of addresses).
    pub fn hub_init_net(&self, tunnel_net: &str) -> String {
        self.hub_init_with(
            HUB_ENDPOINT,
            &[
                "--tunnel-net",
                tunnel_net,
                "--tunnel-net",
                crate::TUNNEL_NET6,
                "--route",
                LAN_NET,
            ],
        )
    }

    /// `tasuki-hub init` with endpoint `endpoint` and arguments `args`
    /// (networks, routes); fails the test if it fails.
    pub fn hub_init_with(&self, endpoint: &str, args: &[&str]) -> String {
        let hub = binaries().hub.as_os_str();
        let dir = self.hub_dir();
        let mut all = vec![
            hub,
            OsStr::new("init"),
            OsStr::new("--state-dir"),
            dir.as_os_str(),
            OsStr::new("--endpoint"),
            OsStr::new(endpoint),
        ];
        all.extend(args.iter().map(OsStr::new));
        self.exec_ok(&self.ns_hub, &all)
    }

    /// Sends `bytes` bytes over TCP from `from_ns` to `dst` (`ADDR:PORT`,
    /// `[V6]:PORT`; a sink on PORT in `to_ns`) and fails the test unless
    /// every byte arrived unaltered.
    pub fn tcp_transfer_intact(&self, from_ns: &str, to_ns: &str, dst: &str, bytes: u64) {
        let port = dst.rsplit(':').next().unwrap_or_default();
        let mut sent = Value::Null;
        let received = self.with_sink(to_ns, &["tcp-sink", port], || {
            sent = self.nettool(from_ns, &["tcp-source", dst, &bytes.to_string()]);
        });
        assert_eq!(sent["bytes"].as_u64(), Some(bytes), "source: {sent}");
        assert_eq!(
            received["bytes"].as_u64(),
            Some(bytes),
            "sink got {received}, source sent {sent}"
        );
        assert_eq!(
            received["sha256"], sent["sha256"],
            "the data was altered in transit"
        );
    }

    /// Enrols each `(name, namespace)` with an invitation carrying `flags`
    /// (`--pre-approved`, `--service`) and starts it; the running spokes.
    pub fn enrol_and_start(&self, spokes: &[(&str, &str)], flags: &[&str]) -> Vec<Proc> {
        spokes
            .iter()
            .map(|(name, ns)| {
                let inv = self.invite_with(name, flags);
                self.enrol_ok(ns, &inv, &self.spoke_dir(name));
                self.start_spoke(ns, &self.spoke_dir(name), &self.spoke_socket(name))
            })
            .collect()
    }

    /// Starts `tasuki-hub run` and waits (up to 20 s) until its admin
    /// socket answers a status request.
    pub fn start_hub(&self) -> Proc {
        self.start_hub_with(&[])
    }

    /// Like [`Topology::start_hub`], with extra `tasuki-hub run` arguments.
    pub fn start_hub_with(&self, extra: &[&str]) -> Proc {
        let hub = binaries().hub.as_os_str();
        let (dir, socket) = (self.hub_dir(), self.hub_socket());
        let mut args = vec![
            hub,
            OsStr::new("run"),
            OsStr::new("--state-dir"),
            dir.as_os_str(),
            OsStr::new("--admin-socket"),
            socket.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let p = self.spawn(&self.ns_hub, &args, &self.hub_log());
        self.wait_for(
            "the hub's admin socket to answer",
            Duration::from_secs(20),
            || {
                self.must_be_alive(&p);
                self.hub_cli(&["status", "--json"]).status.success()
            },
        );
        p
    }

    /// Runs a sink in `ns` on a scoped thread, waits for its ready file, runs
    /// `then`, and returns the sink's JSON line.
    pub fn with_sink(&self, ns: &str, sink_args: &[&str], then: impl FnOnce()) -> Value {
        let t = self;
        let ready = t
            .dir()
            .join(format!("ready-{}-{}", sink_args[0], sink_args[1]));
        let ready_arg = ready.to_string_lossy().into_owned();
        let mut args: Vec<&str> = sink_args.to_vec();
        args.extend(["--ready", &ready_arg]);
        std::thread::scope(|s| {
            let sink = s.spawn(|| t.nettool(ns, &args));
            t.wait_for(
                &format!("{} to listen", sink_args[0]),
                Duration::from_secs(10),
                || ready.exists() || sink.is_finished(),
            );
            then();
            match sink.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Runs `tasuki-hub ARGS --admin-socket SOCK` in the hub namespace.
    pub fn hub_cli(&self, args: &[&str]) -> Output {
        let socket = self.hub_socket();
        let mut full: Vec<&OsStr> = vec![binaries().hub.as_os_str()];
        full.extend(args.iter().map(OsStr::new));
        full.push(OsStr::new("--admin-socket"));
        full.push(socket.as_os_str());
        self.exec(&self.ns_hub, &full)
    }

    /// `tasuki-hub ARGS`, which must succeed (else the test fails with the
    /// daemons' logs); its standard output, trimmed.
    pub fn hub_ok(&self, args: &[&str]) -> String {
        let out = self.hub_cli(args);
        if !out.status.success() {
            self.fail(&format!(
                "`tasuki-hub {}` failed: {}",
                args.join(" "),
                crate::output_text(&out)
            ));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `tasuki-hub spoke invite NAME [--pre-approved]`: the invitation text.
    pub fn invite(&self, name: &str, pre_approved: bool) -> String {
        if pre_approved {
            self.invite_with(name, &["--pre-approved"])
        } else {
            self.invite_with(name, &[])
        }
    }

    /// `tasuki-hub spoke invite NAME FLAGS…`: the invitation text.
    pub fn invite_with(&self, name: &str, flags: &[&str]) -> String {
        let mut args = vec!["spoke", "invite", name];
        args.extend_from_slice(flags);
        let out = self.hub_cli(&args);
        if !out.status.success() {
            self.fail(&format!(
                "`tasuki-hub spoke invite {name}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The hub's metrics endpoint at `at` (inside the hub's namespace), as
    /// Prometheus text.
    pub fn hub_metrics(&self, at: &str) -> String {
        let nettool = binaries().nettool.to_string_lossy().into_owned();
        let out = self.exec(
            &self.ns_hub,
            &[nettool.as_str(), "http-get", at, "/metrics"],
        );
        if !out.status.success() {
            self.fail(&format!("metrics from {at}: {}", crate::output_text(&out)));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `tasuki-hub status --json`, parsed.
    pub fn hub_status_json(&self) -> Value {
        let out = self.hub_cli(&["status", "--json"]);
        if !out.status.success() {
            self.fail(&format!(
                "`tasuki-hub status --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        parse_json(
            self,
            "tasuki-hub status",
            &String::from_utf8_lossy(&out.stdout),
        )
    }

    /// The hub's status as the typed struct of `tasuki_core::admin_api`.
    pub fn hub_status(&self) -> tasuki_core::admin_api::HubStatus {
        let v = self.hub_status_json();
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| self.fail(&format!("unexpected hub status {v}: {e}")))
    }

    /// The hub's drop counter for `reason` (e.g. `forged_source`), 0 if absent.
    pub fn hub_dropped(&self, reason: &str) -> u64 {
        self.hub_status_json()["counters"]["dropped"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    // ----- spokes -----

    /// A state directory for a spoke called `name` (not created).
    pub fn spoke_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A control socket path for a spoke called `name`.
    pub fn spoke_socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// `tasuki-spoke enrol INVITATION --state-dir DIR` in `ns`; the output
    /// whatever the exit status.
    pub fn enrol(&self, ns: &str, invitation: &str, state_dir: &Path) -> Output {
        let spoke = binaries().spoke.as_os_str();
        self.exec(
            ns,
            &[
                spoke,
                OsStr::new("enrol"),
                OsStr::new(invitation),
                OsStr::new("--state-dir"),
                state_dir.as_os_str(),
            ],
        )
    }

    /// Like [`Topology::enrol`] but fails the test unless it succeeds.
    pub fn enrol_ok(&self, ns: &str, invitation: &str, state_dir: &Path) {
        let out = self.enrol(ns, invitation, state_dir);
        if !out.status.success() {
            self.fail(&format!(
                "enrolment into {} from {ns} failed ({})\nstdout: {}\nstderr: {}",
                state_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// Starts `tasuki-spoke run` in `ns` and waits (up to 20 s) until its
    /// control socket answers. Its log is `<state dir>.log`.
    pub fn start_spoke(&self, ns: &str, state_dir: &Path, socket: &Path) -> Proc {
        self.start_spoke_with(ns, state_dir, socket, &[])
    }

    /// Like [`Topology::start_spoke`], with extra `tasuki-spoke run` arguments.
    pub fn start_spoke_with(
        &self,
        ns: &str,
        state_dir: &Path,
        socket: &Path,
        extra: &[&str],
    ) -> Proc {
        let spoke = binaries().spoke.as_os_str();
        let log = state_dir.with_extension("log");
        let mut args = vec![
            spoke,
            OsStr::new("run"),
            OsStr::new("--state-dir"),
            state_dir.as_os_str(),
            OsStr::new("--socket"),
            socket.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let p = self.spawn(ns, &args, &log);
        self.wait_for(
            &format!("spoke {}'s control socket to answer", p.name),
            Duration::from_secs(20),
            || {
                self.must_be_alive(&p);
                self.spoke_cli(socket, &["status", "--json"])
                    .status
                    .success()
            },
        );
        p
    }

    /// Runs `tasuki-spoke ARGS --socket SOCK` (in the hub namespace: the
    /// control socket is a file, reachable from any namespace).
    pub fn spoke_cli(&self, socket: &Path, args: &[&str]) -> Output {
        let mut full: Vec<&OsStr> = vec![binaries().spoke.as_os_str()];
        full.extend(args.iter().map(OsStr::new));
        full.push(OsStr::new("--socket"));
        full.push(socket.as_os_str());
        self.exec(&self.ns_hub, &full)
    }

    /// `tasuki-spoke status --json --socket SOCK`, parsed.
    pub fn spoke_status_json(&self, socket: &Path) -> Value {
        let out = self.spoke_cli(socket, &["status", "--json"]);
        if !out.status.success() {
            self.fail(&format!(
                "`tasuki-spoke status --json --socket {}` failed ({}): {}",
                socket.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        parse_json(
            self,
            "tasuki-spoke status",
            &String::from_utf8_lossy(&out.stdout),
        )
    }
}

/// Two service spokes enrolled and running, and pinging the hub: the starting point
/// of most tests. Dereferences to its [`Topology`].
pub struct TwoSpokes {
    /// The namespaces and helpers.
    pub topo: Topology,
    /// The running hub.
    pub hub: Proc,
    /// The running spoke a (10.77.0.2).
    pub a: Proc,
    /// The running spoke b (10.77.0.3).
    pub b: Proc,
    /// Spoke a's state directory.
    pub a_dir: PathBuf,
    /// Spoke b's state directory.
    pub b_dir: PathBuf,
    /// Spoke a's control socket.
    pub a_socket: PathBuf,
    /// Spoke b's control socket.
    pub b_socket: PathBuf,
}

impl TwoSpokes {
    /// Builds a topology, initialises and starts the hub, enrols spokes a
    /// and b with pre-approved invitations, starts them and waits until
    /// both can ping the hub's tunnel address.
    pub fn up() -> Self {
        // Service spokes: they carry traffic with no user logged in, which
        // is what the data-plane tests need; the login gate has its own tests.
        Self::up_with(|_| ()).0
    }

    /// Waits until both spokes can ping the hub's tunnel address.
    pub fn wait_tunnel_up(&self, timeout: Duration) {
        let t = &self.topo;
        t.wait_for("spoke a to ping the hub (10.77.0.1)", timeout, || {
            t.must_be_alive(&self.hub);
            t.must_be_alive(&self.a);
            t.ping(&t.ns_a, HUB_TUNNEL, 1)
        });
        t.wait_for("spoke b to ping the hub (10.77.0.1)", timeout, || {
            t.must_be_alive(&self.b);
            t.ping(&t.ns_b, HUB_TUNNEL, 1)
        });
    }

    /// Starts the hub again (after [`Topology::kill9`] or
    /// [`Topology::sigterm`]) and records the new process.
    pub fn restart_hub(&mut self) {
        self.hub = self.topo.start_hub();
    }

    /// Starts spoke a again from its state directory.
    pub fn restart_a(&mut self) {
        let t = &self.topo;
        self.a = t.start_spoke(&t.ns_a, &self.a_dir, &self.a_socket);
    }

    /// Starts spoke b again from its state directory.
    pub fn restart_b(&mut self) {
        let t = &self.topo;
        self.b = t.start_spoke(&t.ns_b, &self.b_dir, &self.b_socket);
    }
}

impl Deref for TwoSpokes {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topo
    }
}

impl DerefMut for TwoSpokes {
    fn deref_mut(&mut self) -> &mut Topology {
        &mut self.topo
    }
}
