//! NAT routers on the WAN bridge, each with a host namespace behind it: a
//! remote worker's home or hotel router in front of a spoke.
//!
//! ```text
//!   wan bridge br0 (172.30.0.0/24)
//!     └── nat{i} router 172.30.0.{20+i}  ── lan0 10.202.{i}.1 ── c{i} host 10.202.{i}.2
//! ```
//!
//! The router masquerades everything leaving its WAN side (nftables), so
//! the hub sees the host as the router's address and a mapped port.

use super::*;

/// How a NAT router picks the public port of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// One public port per inside socket, whatever the destination
    /// (`masquerade`: endpoint-independent, like most home routers).
    EndpointIndependent,
    /// A new public port per destination (`masquerade fully-random`, like a
    /// symmetric NAT).
    Symmetric,
}

/// A NAT router namespace and the host namespace behind it.
#[derive(Clone, Debug)]
pub struct Nat {
    /// The router's namespace.
    pub router: String,
    /// The namespace of the host behind it.
    pub host: String,
    /// The router's address on the WAN bridge (what the hub sees).
    pub wan_addr: String,
    /// The host's address behind the router.
    pub host_addr: String,
}

impl Topology {
    /// Adds a namespace `{prefix}-{role}` with its loopback up; it is deleted
    /// with the topology.
    pub fn add_namespace(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.created.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Adds NAT router number `i` (0–9) on the WAN bridge with a host
    /// behind it whose default route is the router.
    pub fn add_nat(&mut self, i: u8, mapping: Mapping) -> Nat {
        assert!(i < 10, "at most 10 NAT routers per topology");
        let router = self.add_namespace(&format!("nat{i}"));
        let host = self.add_namespace(&format!("c{i}"));
        let wan_addr = format!("172.30.0.{}", 20 + i);
        let host_addr = format!("10.202.{i}.2");
        let port = format!("wn{i}");
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            &self.ns_wan,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &router,
        ]);
        ip(&[
            "-n",
            &self.ns_wan,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{wan_addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &router, "link", "set", "eth0", "up"]);
        ip(&[
            "link", "add", "lan0", "netns", &router, "type", "veth", "peer", "name", "eth0",
            "netns", &host,
        ]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.202.{i}.1/24"),
            "dev",
            "lan0",
        ]);
        ip(&["-n", &router, "link", "set", "lan0", "up"]);
        ip(&[
            "-n",
            &host,
            "addr",
            "add",
            &format!("{host_addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            &format!("10.202.{i}.1"),
        ]);
        let rule = match mapping {
            Mapping::EndpointIndependent => "masquerade",
            Mapping::Symmetric => "masquerade fully-random",
        };
        // Like a home router's firewall, nothing new from the WAN reaches
        // the router itself: a peer's probe that arrives before our own
        // went out is dropped before conntrack keeps it (a kept entry would
        // take the mapping's port and make masquerade pick another).
        let script = format!(
            "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100; policy accept;\n  oifname \"eth0\" {rule}\n }}\n}}\ntable ip firewall {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  iifname \"eth0\" ct state new drop\n }}\n}}\n"
        );
        let path = self.dir.join(format!("nat{i}.nft"));
        std::fs::write(&path, script).expect("write the NAT ruleset");
        self.exec_ok(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        self.exec_ok(
            &router,
            &[OsStr::new("nft"), OsStr::new("-f"), path.as_os_str()],
        );
        Nat {
            router,
            host,
            wan_addr,
            host_addr,
        }
    }

    /// Makes `nat`'s UDP mappings expire after `secs` seconds without
    /// traffic (both conntrack timeouts: a flow seen once and a stream).
    pub fn nat_udp_timeout(&self, nat: &Nat, secs: u32) {
        for key in [
            "net.netfilter.nf_conntrack_udp_timeout",
            "net.netfilter.nf_conntrack_udp_timeout_stream",
        ] {
            self.exec_ok(&nat.router, &["sysctl", "-qw", &format!("{key}={secs}")]);
        }
    }
}

/// A service spoke running behind a NAT router.
pub struct Behind {
    /// The namespace of the host it runs in.
    pub ns: String,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub dir: PathBuf,
    /// Its process (stopped on drop).
    pub proc: Proc,
}

impl Topology {
    /// Adds NAT router `i` and starts a pre-approved service spoke `name`
    /// on the host behind it.
    pub fn spoke_behind(&mut self, name: &str, i: u8, mapping: Mapping) -> Behind {
        let nat = self.add_nat(i, mapping);
        let inv = self.invite_with(name, &["--pre-approved", "--service"]);
        let dir = self.spoke_dir(name);
        self.enrol_ok(&nat.host, &inv, &dir);
        let socket = self.spoke_socket(name);
        let proc = self.start_spoke(&nat.host, &dir, &socket);
        Behind {
            ns: nat.host,
            socket,
            dir,
            proc,
        }
    }
}
