//! Direct mode as the tests see it: turning it on, each spoke's peers and
//! paths, the hub's pairs and relay counter, and pings that count.

use super::*;

/// How long a pair may take from the first packet to a direct path.
pub const UPGRADE_WITHIN: Duration = Duration::from_secs(40);

impl Topology {
    /// `tasuki-hub key policy set --direct auto`.
    pub fn direct_on(&self) {
        self.hub_ok(&["key", "policy", "set", "--direct", "auto"]);
    }

    /// The peers spoke `socket` reports (its pairs).
    pub fn peers(&self, socket: &Path) -> Vec<Value> {
        self.spoke_status_json(socket)["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Spoke `socket`'s view of its peer at tunnel address `peer`, if paired.
    pub fn peer_of(&self, socket: &Path, peer: &str) -> Option<Value> {
        self.peers(socket)
            .into_iter()
            .find(|p| p["tunnel_addr"] == peer)
    }

    /// The path (`direct`, `relay`) spoke `socket` reports to the peer at
    /// `peer`, if it has a pair.
    pub fn path_to(&self, socket: &Path, peer: &str) -> Option<String> {
        self.peer_of(socket, peer)
            .and_then(|p| p["path"].as_str().map(str::to_owned))
    }

    /// Inner packets the hub relayed so far.
    pub fn relayed(&self) -> u64 {
        self.hub_status_json()["counters"]["relayed"]
            .as_u64()
            .unwrap_or_else(|| self.fail("the hub's status has no relayed counter"))
    }

    /// `tasuki-hub pair list --json`, parsed.
    pub fn pair_list(&self) -> Vec<Value> {
        let out = self.hub_ok(&["pair", "list", "--json"]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_else(|| self.fail(&format!("pair list --json is no JSON list: {out}")))
    }

    /// Pings `addr` from `ns` until the spoke there (at `socket`) reports a
    /// direct path to it, for [`UPGRADE_WITHIN`] at most.
    pub fn wait_direct(&self, ns: &str, socket: &Path, addr: &str) {
        self.wait_for(&format!("a direct path to {addr}"), UPGRADE_WITHIN, || {
            self.ping(ns, addr, 1);
            self.path_to(socket, addr).as_deref() == Some("direct")
        });
    }

    /// `count` pings from `ns` to `addr`, 20 ms apart; how many were answered.
    pub fn pings(&self, ns: &str, addr: &str, count: u32) -> u32 {
        let count = count.to_string();
        let args = [
            "ping", "-n", "-q", "-c", &count, "-i", "0.02", "-W", "1", addr,
        ];
        let out = self.exec(ns, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(',')
            .find_map(|part| part.trim().strip_suffix(" received"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl TwoSpokes {
    /// Waits until both spokes are direct to each other.
    pub fn both_direct(&self) {
        let t = &self.topo;
        t.wait_direct(&t.ns_a, &self.a_socket, B_TUNNEL);
        t.wait_direct(&t.ns_b, &self.b_socket, A_TUNNEL);
    }

    /// The pair's epoch when hub and spoke a agree on it: the hub's `epoch`
    /// (both holders switched), both holders' `current` and a's peer epoch.
    pub fn pair_epoch_settled(&self, also_b: bool) -> Option<u64> {
        let t = &self.topo;
        let pairs = t.pair_list();
        let [pair] = pairs.as_slice() else {
            return None;
        };
        let epoch = pair["epoch"].as_u64().filter(|e| *e > 0)?;
        let holders = pair["holders"].as_array()?;
        if holders.len() != 2 || holders.iter().any(|h| h["current"].as_u64() != Some(epoch)) {
            return None;
        }
        let a = t.peer_of(&self.a_socket, B_TUNNEL)?;
        if a["epoch"].as_u64() != Some(epoch) {
            return None;
        }
        if also_b {
            let b = t.peer_of(&self.b_socket, A_TUNNEL)?;
            if b["epoch"].as_u64() != Some(epoch) {
                return None;
            }
        }
        Some(epoch)
    }
}
