//! Processes in a [`Topology`]'s namespaces: commands run to completion
//! with a time limit, daemons started in the background with their logs,
//! and the ways to stop them and to show their logs when a test fails.

use super::*;

impl Topology {
    /// A command that runs `args` inside namespace `ns`, with colours off
    /// and a parent-death signal so nothing outlives the test process.
    pub fn command<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd.env("NO_COLOR", "1").stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Runs `args` in `ns` to completion (at most [`EXEC_TIMEOUT`]) and
    /// returns its output, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Output {
        self.exec_timeout(ns, args, EXEC_TIMEOUT)
    }

    /// Like [`Topology::exec`] with an explicit time limit; a command that
    /// overruns it is killed and the test fails.
    pub fn exec_timeout<S: AsRef<OsStr>>(&self, ns: &str, args: &[S], limit: Duration) -> Output {
        let shown = show(args);
        let child = self
            .command(ns, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{shown}` in {ns}: {e}"));
        self.finish(child, &shown, ns, limit)
    }

    /// Collects a started command's output until it exits; after `limit`
    /// kills it and fails the test with what it printed.
    pub(crate) fn finish(
        &self,
        mut child: Child,
        shown: &str,
        ns: &str,
        limit: Duration,
    ) -> Output {
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let (out, err) = (join(out), join(err));
                    self.fail(&format!(
                        "`{shown}` in {ns} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&err)
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot wait for `{shown}`: {e}"),
            }
        };
        Output {
            status,
            stdout: join(out),
            stderr: join(err),
        }
    }

    /// Like [`Topology::exec`] but fails the test unless the command
    /// succeeds; returns its trimmed stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> String {
        let out = self.exec(ns, args);
        if !out.status.success() {
            self.fail(&format!(
                "`{}` in {ns} failed ({})\nstdout: {}\nstderr: {}",
                show(args),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts `args` in `ns` in the background, stdout and stderr appended
    /// to `log`. The topology keeps the process and kills it on drop.
    pub fn spawn<S: AsRef<OsStr>>(&self, ns: &str, args: &[S], log: &Path) -> Proc {
        let shown = show(args);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
        let _ = writeln!(file, "=== tasuki-netns-tests: starting `{shown}` in {ns}");
        let stderr = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate log handle: {e}"));
        let child = self
            .command(ns, args)
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{shown}` in {ns}: {e}"));
        let proc = Proc {
            name: log
                .file_stem()
                .map_or_else(|| shown.clone(), |s| s.to_string_lossy().into_owned()),
            pid: child.id(),
            log: log.to_path_buf(),
        };
        {
            let mut logs = lock(&self.logs);
            if !logs.iter().any(|l| l == log) {
                logs.push(log.to_path_buf());
            }
        }
        lock(&self.children).push((proc.clone(), child));
        proc
    }

    /// Whether `p` is still running (false once it exited or was killed).
    pub fn is_alive(&self, p: &Proc) -> bool {
        let mut children = lock(&self.children);
        match children.iter_mut().find(|(q, _)| q.pid == p.pid) {
            Some((_, child)) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How `p` exited, if it did (`None` while it runs or once reaped by
    /// [`Topology::kill9`] / [`Topology::sigterm`]).
    pub fn exit_status(&self, p: &Proc) -> Option<ExitStatus> {
        let mut children = lock(&self.children);
        children
            .iter_mut()
            .find(|(q, _)| q.pid == p.pid)
            .and_then(|(_, child)| child.try_wait().ok().flatten())
    }

    fn take_child(&self, p: &Proc) -> Option<Child> {
        let mut children = lock(&self.children);
        let i = children.iter().position(|(q, _)| q.pid == p.pid)?;
        Some(children.remove(i).1)
    }

    /// Kills `p` with SIGKILL and reaps it.
    pub fn kill9(&self, p: &Proc) {
        if let Some(mut child) = self.take_child(p) {
            let _ = child.kill();
            let _ = child.wait();
            note(&p.log, "killed with SIGKILL");
        }
    }

    /// Sends SIGTERM to `p` and waits up to 10 s for it to exit; fails the
    /// test (after killing it) if it does not. Returns its exit status.
    pub fn sigterm(&self, p: &Proc) -> ExitStatus {
        let Some(mut child) = self.take_child(p) else {
            self.fail(&format!("{} (pid {}) is not running", p.name, p.pid));
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.fail(&format!("{} had already exited ({status})", p.name));
        }
        // SAFETY: kill(2) on a child we have not reaped yet, so the pid is ours.
        unsafe {
            libc::kill(p.pid as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    note(&p.log, &format!("exited after SIGTERM: {status}"));
                    return status;
                }
                Ok(None) if start.elapsed() > Duration::from_secs(10) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.fail(&format!("{} did not exit within 10 s of SIGTERM", p.name));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("cannot wait for {}: {e}", p.name),
            }
        }
    }

    /// The last lines of every process log, for failure messages.
    pub fn log_tails(&self) -> String {
        let logs = lock(&self.logs).clone();
        let mut text = String::new();
        for log in logs {
            text.push_str(&format!("\n----- tail of {} -----\n", log.display()));
            text.push_str(&tail(&log, LOG_TAIL_LINES));
        }
        text
    }

    /// Fails the test with the logs if `p` has exited.
    pub fn must_be_alive(&self, p: &Proc) {
        if let Some(status) = self.exit_status(p) {
            self.fail(&format!("{} (pid {}) exited: {status}", p.name, p.pid));
        }
    }
}

pub(crate) fn show<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Appends a harness note to a process log.
fn note(log: &Path, what: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(log) {
        let _ = writeln!(f, "=== tasuki-netns-tests: {what}");
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = match File::open(path) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => return format!("(cannot read: {e})\n"),
    };
    let mut lines: VecDeque<&str> = VecDeque::with_capacity(n);
    for line in text.lines() {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    let mut s = lines.into_iter().collect::<Vec<_>>().join("\n");
    s.push('\n');
    s
}

type Drain = std::thread::JoinHandle<Vec<u8>>;

fn drain<R: Read + Send + 'static>(r: Option<R>) -> Option<Drain> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    })
}

fn join(d: Option<Drain>) -> Vec<u8> {
    d.and_then(|h| h.join().ok()).unwrap_or_default()
}
