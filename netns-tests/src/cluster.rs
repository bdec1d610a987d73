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
            format!("--initial-cluster=e{host}={peer}"),
        ];
        let log = self.dir().join(format!("etcd{host}.log"));
        let mut etcd = Etcd {
            ns,
            url,
            data,
            proc: None,
            args,
            log,
        };
        self.restart_etcd(&mut etcd);
        etcd
    }

    /// Starts `etcd` (again, from its data directory) and waits until it
    /// answers.
    pub fn restart_etcd(&self, etcd: &mut Etcd) {
        let p = self.spawn(&etcd.ns, &etcd.args, &etcd.log);
        self.wait_for("etcd to answer", Duration::from_secs(30), || {
            self.must_be_alive(&p);
            self.exec(
                &etcd.ns,
                &["etcdctl", "--endpoints", &etcd.url, "endpoint", "health"],
            )
            .status
            .success()
        });
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
    pub fn first_member(&self, etcd: &Etcd) -> TreeHub {
        self.hub_init_with(
            HUB_ENDPOINT,
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &etcd.url,
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
    pub fn join_member(&mut self, etcd: &Etcd, first: &TreeHub, host: u8) -> TreeHub {
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
                &etcd.url,
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
