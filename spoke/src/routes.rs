//! The routes the hub gives a running spoke, kept on its TUN: a new
//! configuration that changes only the routes (IPv4, IPv6, or both, and
//! perhaps brings IPv6 too) is taken at once, the new routes added and the
//! vanished ones removed; any other change waits for a restart.

use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use tasuki_core::address_plan::SpokeIpv6;
use tasuki_core::control::SpokeConfig;
use tasuki_shell::netdev;

/// The routes on the TUN, shared by the data plane's start (which puts the
/// first ones there) and the control loop (which follows the hub's
/// changes); `None` until the TUN is up. Held across the route changes,
/// so that they are made in the order the configurations came.
pub(crate) type SharedRoutes = Arc<tokio::sync::Mutex<Option<Routed>>>;

/// What a new configuration from the hub is to a running spoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The first configuration: the data plane starts with it.
    First,
    /// Only routes changed (perhaps none), and IPv6 came when it brings
    /// some: taken at once.
    Live {
        /// IPv6 the spoke had not had (see [`crate::ipv6`]).
        gained6: Option<SpokeIpv6>,
    },
    /// Something else changed: a restart takes it.
    Restart,
}

/// What `new` changes from the configuration in effect, `old`.
pub(crate) fn classify(old: Option<&SpokeConfig>, new: &SpokeConfig) -> Change {
    let Some(old) = old else {
        return Change::First;
    };
    let (old_rest, new_rest) = (without_routes(old), without_routes(new));
    if old_rest == new_rest {
        return Change::Live { gained6: None };
    }
    let new_without6 = SpokeConfig {
        ipv6: None,
        ..new_rest
    };
    match (&old.ipv6, &new.ipv6) {
        (None, Some(v6)) if old_rest == new_without6 => Change::Live {
            gained6: Some(v6.clone()),
        },
        _ => Change::Restart,
    }
}

/// `config` with no routes of either family.
fn without_routes(config: &SpokeConfig) -> SpokeConfig {
    SpokeConfig {
        routes: Vec::new(),
        // Taken at once by the control loop (the members it tries).
        hub_endpoints: Vec::new(),
        ipv6: config.ipv6.as_ref().map(|v6| SpokeIpv6 {
            routes: Vec::new(),
            ..v6.clone()
        }),
        ..config.clone()
    }
}

/// Routes to add and to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteDiff {
    /// IPv4 routes new in the configuration.
    pub(crate) add: Vec<Ipv4Net>,
    /// IPv4 routes gone from it.
    pub(crate) remove: Vec<Ipv4Net>,
    /// IPv6 routes new in it.
    pub(crate) add6: Vec<Ipv6Net>,
    /// IPv6 routes gone from it.
    pub(crate) remove6: Vec<Ipv6Net>,
}

impl RouteDiff {
    /// Whether nothing is to change.
    pub(crate) fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.add6.is_empty()
            && self.remove6.is_empty()
    }
}

/// The routes to `want` that `have` lacks, and those of `have` that
/// `want` lacks (each once).
fn between<T: PartialEq + Copy>(have: &[T], want: &[T]) -> (Vec<T>, Vec<T>) {
    let mut add: Vec<T> = Vec::new();
    for n in want {
        if !have.contains(n) && !add.contains(n) {
            add.push(*n);
        }
    }
    let mut remove: Vec<T> = Vec::new();
    for n in have {
        if !want.contains(n) && !remove.contains(n) {
            remove.push(*n);
        }
    }
    (add, remove)
}

/// The routes tasuki keeps on the TUN: those of the configuration last
/// taken (an IPv6 route is counted even where IPv6 is not carried, so
/// that it is not tried again at every change).
#[derive(Clone, Debug)]
pub(crate) struct Routed {
    interface: String,
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Routed {
    /// Puts the routes of `config` on the TUN `interface` (its IPv6 routes
    /// only when `has6`, the TUN carrying IPv6). Returns what is routed,
    /// and a sentence for each route that could not be added (each logged).
    pub(crate) async fn install(
        interface: &str,
        config: &SpokeConfig,
        has6: bool,
    ) -> (Self, Vec<String>) {
        let mut routed = Self {
            interface: interface.to_owned(),
            v4: Vec::new(),
            v6: Vec::new(),
        };
        let mut diff = routed.diff(config);
        if !has6 {
            routed.v6 = std::mem::take(&mut diff.add6);
        }
        let failed = routed.apply(diff).await;
        (routed, failed)
    }

    /// What changes on the TUN to route as `config` says.
    pub(crate) fn diff(&self, config: &SpokeConfig) -> RouteDiff {
        let (add, remove) = between(&self.v4, &config.routes);
        let want6 = config.ipv6.as_ref().map_or(&[][..], |v6| &v6.routes[..]);
        let (add6, remove6) = between(&self.v6, want6);
        RouteDiff {
            add,
            remove,
            add6,
            remove6,
        }
    }

    /// Routes as `config` says, at once: the new routes added, the
    /// vanished ones removed, and the change logged. With `gained6`, IPv6
    /// came with this configuration: its routes are added with its address
    /// (see [`crate::ipv6::take`]), not here.
    pub(crate) async fn follow(&mut self, config: &SpokeConfig, gained6: bool) {
        let mut diff = self.diff(config);
        if gained6 {
            self.v6.append(&mut diff.add6);
        }
        if diff.is_empty() {
            return;
        }
        tracing::info!(
            interface = %self.interface, added = ?diff.add, removed = ?diff.remove,
            added6 = ?diff.add6, removed6 = ?diff.remove6,
            "the hub changed this spoke's routes: taking them at once"
        );
        let failed = self.apply(diff).await;
        if !failed.is_empty() {
            tracing::warn!(
                failed = failed.len(),
                "some route changes could not be made; a restart makes them from the stored configuration"
            );
        }
    }

    /// Makes the changes of `diff` (see [`netdev::KeptRoutes::change`]);
    /// returns a sentence for each route that failed.
    async fn apply(&mut self, diff: RouteDiff) -> Vec<String> {
        let mut kept = netdev::KeptRoutes {
            v4: std::mem::take(&mut self.v4),
            v6: std::mem::take(&mut self.v6),
        };
        let add = netdev::KeptRoutes {
            v4: diff.add,
            v6: diff.add6,
        };
        let remove = netdev::KeptRoutes {
            v4: diff.remove,
            v6: diff.remove6,
        };
        let failed = kept.change(&self.interface, &add, &remove).await;
        (self.v4, self.v6) = (kept.v4, kept.v6);
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn config(routes: &[&str], v6: Option<&[&str]>) -> SpokeConfig {
        SpokeConfig {
            spoke_id: 7,
            name: "branch".into(),
            tunnel_addr: net("10.77.0.7/24"),
            hub_tunnel_addr: "10.77.0.1".parse().unwrap(),
            routes: routes.iter().map(|r| net(r)).collect(),
            mtu: 1420,
            keepalive_secs: 25,
            ipv6: v6.map(|routes| SpokeIpv6 {
                tunnel_addr: net6("fd00:77::7/64"),
                hub_tunnel_addr: "fd00:77::1".parse().unwrap(),
                routes: routes.iter().map(|r| net6(r)).collect(),
            }),
            hub_endpoints: Vec::new(),
        }
    }

    fn routed(v4: &[&str], v6: &[&str]) -> Routed {
        Routed {
            interface: "tasuki0".into(),
            v4: v4.iter().map(|r| net(r)).collect(),
            v6: v6.iter().map(|r| net6(r)).collect(),
        }
    }

    #[test]
    fn the_diff_adds_the_new_and_removes_the_vanished() {
        let have = routed(&["10.1.0.0/16", "10.2.0.0/16"], &["fd01::/48"]);
        let want = config(
            &["10.2.0.0/16", "10.3.0.0/16", "10.3.0.0/16"],
            Some(&["fd02::/48"]),
        );
        assert_eq!(
            have.diff(&want),
            RouteDiff {
                add: vec![net("10.3.0.0/16")],
                remove: vec![net("10.1.0.0/16")],
                add6: vec![net6("fd02::/48")],
                remove6: vec![net6("fd01::/48")],
            }
        );
        // Nothing to do once routed as the configuration says.
        let same = routed(&["10.3.0.0/16", "10.2.0.0/16"], &["fd02::/48"]);
        assert!(same.diff(&want).is_empty());
        // A configuration without IPv6 removes every IPv6 route.
        let diff = have.diff(&config(&["10.1.0.0/16", "10.2.0.0/16"], None));
        assert_eq!(diff.remove6, vec![net6("fd01::/48")]);
        assert!(diff.add.is_empty() && diff.remove.is_empty() && diff.add6.is_empty());
    }

    #[test]
    fn only_route_changes_are_taken_live() {
        let old = config(&["10.1.0.0/16"], Some(&["fd01::/48"]));
        assert_eq!(classify(None, &old), Change::First);
        assert_eq!(classify(Some(&old), &old), Change::Live { gained6: None });
        let routes = config(&["10.2.0.0/16"], Some(&[]));
        assert_eq!(
            classify(Some(&old), &routes),
            Change::Live { gained6: None }
        );
        // IPv6 gained, with other IPv4 routes too.
        let v4only = config(&["10.1.0.0/16"], None);
        let gained = config(&["10.9.0.0/16"], Some(&["fd01::/48"]));
        assert_eq!(
            classify(Some(&v4only), &gained),
            Change::Live {
                gained6: gained.ipv6.clone()
            }
        );
        // IPv6 taken away, or anything besides the routes: a restart.
        assert_eq!(classify(Some(&old), &v4only), Change::Restart);
        let moved = SpokeConfig {
            mtu: 1280,
            ..routes.clone()
        };
        assert_eq!(classify(Some(&old), &moved), Change::Restart);
        let mut readdressed = routes;
        if let Some(v6) = readdressed.ipv6.as_mut() {
            v6.tunnel_addr = net6("fd00:78::7/64");
        }
        assert_eq!(classify(Some(&old), &readdressed), Change::Restart);
        let gained_and_moved = SpokeConfig {
            keepalive_secs: 10,
            ..gained
        };
        assert_eq!(classify(Some(&v4only), &gained_and_moved), Change::Restart);
    }
}
