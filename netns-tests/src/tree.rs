//! A tree of hubs (claim 6) in a [`Topology`]: more hub namespaces on the
//! WAN bridge, each with its own state, socket, log, tunnel network and
//! optionally a LAN host; spokes enrolled under any of them.

use super::*;

/// One hub of a tree (not the topology's own hub, which is the root).
#[derive(Clone, Debug)]
pub struct TreeHub {
    /// Its name (the child hub's name at its parent too).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the WAN bridge.
    pub wan: String,
    /// Its tunnel network.
    pub tunnel_net: String,
    /// Its own tunnel address.
    pub tunnel_addr: String,
    /// Its own IPv6 tunnel address (`fd<net>:1::1` for a tree hub).
    pub tunnel_addr6: String,
    /// The LAN host behind it (its namespace and address), if any.
    pub lan_host: Option<(String, String)>,
    /// Its state directory.
    pub dir: PathBuf,
    /// Its admin socket.
    pub socket: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl TreeHub {
    /// `HOST:PORT` spokes and child hubs use.
    pub fn endpoint(&self) -> String {
        format!("{}:51820", self.wan)
    }
}

/// A spoke enrolled under a [`TreeHub`] and running.
#[derive(Clone, Debug)]
pub struct TreeSpoke {
    /// Its namespace.
    pub ns: String,
    /// Its tunnel address.
    pub tunnel_addr: String,
    /// Its IPv6 tunnel address.
    pub tunnel_addr6: String,
    /// Its local socket.
    pub socket: PathBuf,
    /// The daemon.
    pub proc: Proc,
}

impl Topology {
    /// The topology's own hub as the root of a tree (initialised with
    /// [`Topology::hub_init`]); its LAN host routes every 10/8 tunnel
    /// network of the tree through it.
    pub fn root_tree_hub(&self) -> TreeHub {
        ip(&[
            "-n",
            &self.ns_lan,
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            HUB_LAN,
        ]);
        self.exec_ok(
            &self.ns_hub,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        );
        TreeHub {
            name: "root".into(),
            ns: self.ns_hub.clone(),
            wan: HUB_WAN.into(),
            tunnel_net: TUNNEL_NET.into(),
            tunnel_addr: HUB_TUNNEL.into(),
            tunnel_addr6: HUB_TUNNEL6.into(),
            lan_host: Some((self.ns_lan.clone(), LAN_HOST.into())),
            dir: self.hub_dir(),
            socket: self.hub_socket(),
            log: self.hub_log(),
        }
    }

    /// Adds hub `name` in a namespace of its own at 172.30.0.`host` on the
    /// WAN bridge with tunnel network `10.<net>.0.0/24` and `fd<net>:1::/64` and,
    /// with `lan`, a LAN host at 192.168.<net>.2 behind it; initialised,
    /// not started.
    pub fn add_tree_hub(&mut self, name: &str, host: u8, net: u8, lan: bool) -> TreeHub {
        let (ns, wan) = self.add_wan_host(name, host);
        self.exec_ok(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        self.exec_ok(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let lan_host = lan.then(|| {
            let host_ns = self.add_namespace(&format!("{name}-lan"));
            ip(&[
                "link", "add", "lan0", "netns", &ns, "type", "veth", "peer", "name", "eth0",
                "netns", &host_ns,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("192.168.{net}.1/24"),
                "dev",
                "lan0",
            ]);
            ip(&["-n", &ns, "link", "set", "lan0", "up"]);
            let addr = format!("192.168.{net}.2");
            ip(&[
                "-n",
                &host_ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &host_ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &host_ns,
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{net}.1"),
            ]);
            (host_ns, addr)
        });
        let hub = TreeHub {
            name: name.into(),
            ns,
            wan,
            tunnel_net: format!("10.{net}.0.0/24"),
            tunnel_addr: format!("10.{net}.0.1"),
            tunnel_addr6: format!("fd{net}:1::1"),
            lan_host,
            dir: self.dir().join(format!("hub-{name}")),
            socket: self.dir().join(format!("hub-{name}.sock")),
            log: self.dir().join(format!("hub-{name}.log")),
        };
        let net6 = format!("fd{net}:1::/64");
        let route = format!("192.168.{net}.0/24");
        let mut extra = vec!["--tunnel-net", net6.as_str()];
        if lan {
            extra.extend(["--route", route.as_str()]);
        }
        self.init_tree_hub(&hub, &extra);
        hub
    }

    /// Adds namespace `{prefix}-{role}` at 172.30.0.`host` on the WAN
    /// bridge; its name and address.
    pub fn add_wan_host(&mut self, role: &str, host: u8) -> (String, String) {
        let ns = self.add_namespace(role);
        let wan = format!("172.30.0.{host}");
        let port = format!("wt{host}");
        let wan_ns = self.ns_wan.clone();
        ip(&[
            "link", "add", &port, "netns", &wan_ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ip(&["-n", &wan_ns, "link", "set", &port, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{wan}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        (ns, wan)
    }

    /// The link epoch child hub `child` runs at `parent`, when both sides
    /// agree on it.
    pub fn tree_epoch(&self, parent: &TreeHub, child: &TreeHub) -> Option<u64> {
        let up = self.tree_list(child)["parent"]["epoch"].as_u64()?;
        let list = self.tree_list(parent);
        let row = list["children"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == child.name.as_str())?
            .clone();
        (row["link"]["epoch"].as_u64()? == up).then_some(up)
    }

    /// `tasuki-hub init` of `hub` in its state directory, at its endpoint,
    /// with its IPv4 tunnel network and `extra` arguments.
    pub fn init_tree_hub(&self, hub: &TreeHub, extra: &[&str]) {
        let bin = binaries().hub.display().to_string();
        let dir = hub.dir.display().to_string();
        let endpoint = hub.endpoint();
        let mut args = vec![
            bin.as_str(),
            "init",
            "--state-dir",
            &dir,
            "--endpoint",
            &endpoint,
            "--tunnel-net",
            &hub.tunnel_net,
        ];
        args.extend(extra);
        self.exec_ok(&hub.ns, &args);
    }

    /// Starts `tasuki-hub run` for `hub` and waits until its socket answers.
    pub fn start_tree_hub(&self, hub: &TreeHub) -> Proc {
        let bin = binaries().hub.display().to_string();
        let (dir, socket) = (
            hub.dir.display().to_string(),
            hub.socket.display().to_string(),
        );
        let args = ["run", "--state-dir", &dir, "--admin-socket", &socket];
        let mut all = vec![bin.as_str()];
        all.extend(args);
        let p = self.spawn(&hub.ns, &all, &hub.log);
        self.wait_for(
            &format!("hub {} to answer", hub.name),
            Duration::from_secs(20),
            || {
                self.must_be_alive(&p);
                self.tree_cli(hub, &["status", "--json"]).status.success()
            },
        );
        p
    }

    /// `tasuki-hub ARGS` against `hub`'s socket.
    pub fn tree_cli(&self, hub: &TreeHub, args: &[&str]) -> Output {
        let bin = binaries().hub.display().to_string();
        let socket = hub.socket.display().to_string();
        let mut all = vec![bin.as_str()];
        all.extend(args);
        all.extend(["--admin-socket", socket.as_str()]);
        self.exec(&hub.ns, &all)
    }

    /// The same; fails the test unless it succeeds; its stdout.
    pub fn tree_ok(&self, hub: &TreeHub, args: &[&str]) -> String {
        let out = self.tree_cli(hub, args);
        if !out.status.success() {
            self.fail(&format!(
                "tasuki-hub {args:?} at {}: {}",
                hub.name,
                output_text(&out)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hub list --json` at `hub`.
    pub fn tree_list(&self, hub: &TreeHub) -> Value {
        let text = self.tree_ok(hub, &["hub", "list", "--json"]);
        parse_json(self, "hub list", &text)
    }

    /// Enrols a service spoke `name` under `hub` from namespace `ns` and
    /// starts it; waits for its tunnel address.
    pub fn tree_spoke(&self, hub: &TreeHub, name: &str, ns: &str) -> TreeSpoke {
        let inv = self.tree_ok(
            hub,
            &["spoke", "invite", name, "--pre-approved", "--service"],
        );
        let dir = self.dir().join(format!("spoke-{name}"));
        self.enrol_ok(ns, inv.trim(), &dir);
        let socket = self.dir().join(format!("spoke-{name}.sock"));
        let proc = self.start_spoke(ns, &dir, &socket);
        let (mut addr, mut addr6) = (String::new(), String::new());
        self.wait_for(
            &format!("spoke {name} to run"),
            Duration::from_secs(20),
            || {
                let s = self.spoke_status_json(&socket);
                addr = s["tunnel_addr"].as_str().unwrap_or_default().to_string();
                addr6 = s["tunnel_addr6"].as_str().unwrap_or_default().to_string();
                s["state"] == "running" && s["epoch"].is_u64()
            },
        );
        let tunnel_addr = addr.split('/').next().unwrap_or_default().to_string();
        TreeSpoke {
            ns: ns.into(),
            tunnel_addr,
            tunnel_addr6: addr6.split('/').next().unwrap_or_default().to_string(),
            socket,
            proc,
        }
    }

    /// Joins `child` to `parent`: invitation there, `join` here, approval
    /// there; waits until the child's uplink runs under a link epoch.
    pub fn join_tree(&self, parent: &TreeHub, child: &TreeHub) {
        let inv = self.tree_ok(parent, &["hub", "invite", &child.name]);
        self.tree_ok(child, &["join", inv.trim()]);
        self.tree_ok(parent, &["hub", "approve", &child.name]);
        self.wait_for(
            &format!("{}'s uplink to {} to run", child.name, parent.name),
            Duration::from_secs(30),
            || {
                let list = self.tree_list(child);
                list["parent"]["state"] == "running" && list["parent"]["epoch"].is_u64()
            },
        );
    }
}
