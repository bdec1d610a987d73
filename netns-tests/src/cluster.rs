//! A hub cluster on etcd in a [`Topology`]: an etcd member in a namespace
//! of its own on the WAN bridge, the topology's hub as the cluster's first
//! member and more members in namespaces beside it, each with its own state
//! directory, socket and log.

use super::*;
use crate::tree::TreeHub;

/// One etcd member running in a namespace.
#[derive(Clone, Debug)]
pub struct Etcd {
    /// Its namespace.
    pub ns: String,
    /// Its client URL.
    pub url: String,
    /// Its data directory.
    pub data: PathBuf,
    /// The process, while it runs.
    pub proc: Option<Proc>,
    args: Vec<String>,
    log: PathBuf,
}

impl Topology {
    /// Starts a single-member etcd at `172.30.0.{host}` and waits until it
    /// answers.
    pub fn start_etcd(&mut self, host: u8) -> Etcd {
        let mut etcd = self.etcd_member(host);
        etcd.args.push(format!(
            "--initial-cluster=e{host}=http://172.30.0.{host}:2380"
        ));
        self.restart_etcd(&mut etcd);
        etcd
    }

    /// Starts a three-member etcd at `172.30.0.{host}` for each of `hosts`
    /// and waits until every member answers.
    pub fn start_etcd_cluster(&mut self, hosts: [u8; 3]) -> Vec<Etcd> {
        let peers: Vec<String> = hosts
            .iter()
            .map(|h| format!("e{h}=http://172.30.0.{h}:2380"))
            .collect();
        let mut members: Vec<Etcd> = hosts
            .iter()
            .map(|&h| {
                let mut e = self.etcd_member(h);
                e.args
                    .push(format!("--initial-cluster={}", peers.join(",")));
                e
            })
            .collect();
        // All start before any is waited for: none has quorum alone.
        for e in &mut members {
            e.proc = Some(self.spawn(&e.ns, &e.args, &e.log));
        }
        for e in &mut members {
            let p = e.proc.take().expect("started");
            self.wait_until_answers(e, &p);
            e.proc = Some(p);
        }
        members
    }

    /// One member's namespace and arguments (its cluster not named yet).
    fn etcd_member(&mut self, host: u8) -> Etcd {
        let (ns, wan) = self.add_wan_host(&format!("etcd{host}"), host);
        let data = self.dir().join(format!("etcd{host}"));
        let url = format!("http://{wan}:2379");
        let peer = format!("http://{wan}:2380");
        let args = vec![
            "etcd".to_owned(),
            format!("--name=e{host}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
        ];
        let log = self.dir().join(format!("etcd{host}.log"));
        Etcd {
            ns,
            url,
            data,
            proc: None,
            args,
            log,
        }
    }

    fn wait_until_answers(&self, etcd: &Etcd, p: &Proc) {
        self.wait_for("etcd to answer", Duration::from_secs(30), || {
            self.must_be_alive(p);
            self.exec(
                &etcd.ns,
                &["etcdctl", "--endpoints", &etcd.url, "endpoint", "health"],
            )
            .status
            .success()
        });
    }

    /// Starts `etcd` (again, from its data directory) and waits until it
    /// answers.
    pub fn restart_etcd(&self, etcd: &mut Etcd) {
        let p = self.spawn(&etcd.ns, &etcd.args, &etcd.log);
        self.wait_until_answers(etcd, &p);
        etcd.proc = Some(p);
    }

    /// Kills `etcd` with SIGKILL.
    pub fn kill_etcd(&self, etcd: &mut Etcd) {
        if let Some(p) = etcd.proc.take() {
            self.kill9(&p);
        }
    }

    /// The topology's hub as the first member of a cluster on `etcd`
    /// (initialised here), tunnel network [`TUNNEL_NET`].
    pub fn first_member(&self, etcd: &[Etcd]) -> TreeHub {
        let urls = etcd_urls(etcd);
        self.hub_init_with(
            HUB_ENDPOINT,
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &urls,
                "--tunnel-net",
                TUNNEL_NET,
                "--tunnel-net",
                TUNNEL_NET6,
                "--route",
                LAN_NET,
            ],
        );
        TreeHub {
            name: "hub".into(),
            ns: self.ns_hub.clone(),
            wan: HUB_WAN.into(),
            tunnel_net: TUNNEL_NET.into(),
            tunnel_addr: HUB_TUNNEL.into(),
            tunnel_addr6: HUB_TUNNEL6.into(),
            lan_host: None,
            dir: self.hub_dir(),
            socket: self.hub_socket(),
            log: self.hub_log(),
        }
    }

    /// Another member at `172.30.0.{host}`, joined with the first
    /// member's cluster key.
    pub fn join_member(&mut self, etcd: &[Etcd], first: &TreeHub, host: u8) -> TreeHub {
        let urls = etcd_urls(etcd);
        let name = format!("hub{host}");
        let (ns, wan) = self.add_wan_host(&name, host);
        let dir = self.dir().join(&name);
        let key = first.dir.join("cluster.key");
        let bin = binaries().hub.display().to_string();
        let (dir_s, key_s) = (dir.display().to_string(), key.display().to_string());
        let endpoint = format!("{wan}:51820");
        self.exec_ok(
            &ns,
            &[
                bin.as_str(),
                "init",
                "--state-dir",
                &dir_s,
                "--store",
                "etcd",
                "--etcd-endpoints",
                &urls,
                "--join",
                "--cluster-key",
                &key_s,
                "--endpoint",
                &endpoint,
            ],
        );
        TreeHub {
            name: name.clone(),
            ns,
            wan,
            tunnel_net: TUNNEL_NET.into(),
            tunnel_addr: HUB_TUNNEL.into(),
            tunnel_addr6: HUB_TUNNEL6.into(),
            lan_host: None,
            socket: self.dir().join(format!("{name}.sock")),
            log: self.dir().join(format!("{name}.log")),
            dir,
        }
    }

    /// Starts a member; it may stand by, so nothing is waited for.
    pub fn start_member(&self, hub: &TreeHub) -> Proc {
        let bin = binaries().hub.display().to_string();
        let (dir, socket) = (
            hub.dir.display().to_string(),
            hub.socket.display().to_string(),
        );
        self.spawn(
            &hub.ns,
            &[
                bin.as_str(),
                "run",
                "--state-dir",
                &dir,
                "--admin-socket",
                &socket,
            ],
            &hub.log,
        )
    }

    /// Whether `hub` is the active member (its admin socket answers).
    pub fn member_active(&self, hub: &TreeHub) -> bool {
        self.tree_cli(hub, &["status", "--json"]).status.success()
    }

    /// Whether `hub`'s log says it stands by.
    pub fn member_stands_by(&self, hub: &TreeHub) -> bool {
        std::fs::read_to_string(&hub.log).is_ok_and(|l| {
            l.rsplit("=== tasuki-netns-tests: starting")
                .next()
                .is_some_and(|run| run.contains("standby: another hub is active"))
        })
    }
}

fn etcd_urls(etcd: &[Etcd]) -> String {
    etcd.iter()
        .map(|e| e.url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl Topology {
    /// Cuts `ns` off from `hosts` (both ways) until [`Topology::heal`].
    pub fn partition(&self, ns: &str, hosts: &[&str]) {
        let set = hosts.join(", ");
        let rules = format!(
            "table inet tasuki_partition {{\n\
             chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n\
             chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n}}\n"
        );
        let file = self.dir().join(format!("partition-{ns}.nft"));
        std::fs::write(&file, rules).expect("write the nft rules");
        let f = file.display().to_string();
        self.exec_ok(ns, &["nft", "-f", &f]);
    }

    /// Undoes [`Topology::partition`].
    pub fn heal(&self, ns: &str) {
        self.exec_ok(ns, &["nft", "delete", "table", "inet", "tasuki_partition"]);
    }

    /// `tasuki-hub cluster status --json` as `hub` sees it.
    pub fn cluster_status(&self, hub: &TreeHub) -> Value {
        let bin = binaries().hub.display().to_string();
        let dir = hub.dir.display().to_string();
        let out = self.exec(
            &hub.ns,
            &[
                bin.as_str(),
                "cluster",
                "status",
                "--state-dir",
                &dir,
                "--json",
            ],
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}
