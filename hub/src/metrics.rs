//! A Prometheus text endpoint (`--metrics ADDR`, off by default): counters
//! per link, drops by reason, handshakes, rotations, spokes by state, logins.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use std::collections::HashMap;

use crate::dataplane::DpStatus;
use crate::state::{HubState, SharedState};
use anyhow::{Context, Result};
use tasuki_core::admin_api::{Counters, HubStatus, LinkKeyView, SpokeView};
use tasuki_core::rotation::Usage;
use tasuki_core::routing::SpokeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Binds the endpoint.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the metrics endpoint {addr}"))
}

/// Serves `GET /metrics` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, state: SharedState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &state).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, state: &SharedState) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read the request head (bounded in size and time).
    tokio::time::timeout(Duration::from_secs(5), async {
        while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
        }
        anyhow::Ok(())
    })
    .await
    .context("request timed out")??;
    let head = String::from_utf8_lossy(&buf[..len]);
    let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
        let dp = state.with(|st| st.dataplane()).status().await;
        ("200 OK", state.with(|st| render(st, dp.as_ref())))
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// A label value as the text format needs it: `\\`, `"` and newlines escaped.
fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text for the hub's current state.
/// `dp` is the data plane's status, asked for with the state unlocked.
pub(crate) fn render(st: &HubState, dp: Option<&DpStatus>) -> String {
    write_families(&families(&Snapshot::take(st, dp)))
}

/// Every metric family, in the order the text lists them.
fn families(snap: &Snapshot) -> Vec<Family> {
    let mut families = traffic_families(&snap.status.counters);
    families.extend(link_families(snap));
    families.extend(state_families(snap));
    families.extend(direct_families(snap));
    families.extend(group_families(snap));
    families.extend(store_families(snap));
    families
}

/// The store's commits, and a cluster member's standing.
fn store_families(snap: &Snapshot) -> Vec<Family> {
    let (counts, health) = &snap.store;
    let mut families = vec![
        counter(
            "tasuki_store_commits_total",
            "Store commits, by outcome (ok: durable when acknowledged).",
            vec![
                (labels(&[("outcome", "ok")]), counts.commits),
                (labels(&[("outcome", "failed")]), counts.failed),
            ],
        ),
        counter(
            "tasuki_store_commit_microseconds_total",
            "Time spent in store commits (sled: the flush; etcd: the transaction).",
            single(counts.micros),
        ),
    ];
    if let Some(health) = health {
        use tasuki_core::leadership::Health;
        let rows = [
            ("active", *health == Health::Active),
            ("degraded", *health == Health::Degraded),
            ("orphaned", *health == Health::Orphaned),
        ]
        .iter()
        .map(|(name, on)| (labels(&[("state", name)]), u64::from(*on)))
        .collect();
        families.push(gauge(
            "tasuki_cluster_health",
            "1 for this cluster member's standing: active (lease renewed), degraded (changes \
             refused, etcd not answering), orphaned (lease may have lapsed: spokes turned away).",
            rows,
        ));
    }
    families
}

/// What the metrics are read from: the hub's state at one moment.
struct Snapshot {
    status: HubStatus,
    spokes: Vec<SpokeView>,
    usage: HashMap<SpokeId, Usage>,
    keys: Vec<LinkKeyView>,
    logins: usize,
    /// Pair messages not taken (refused requests, unknown pairs).
    pair_counters: crate::state::PairCounters,
    /// Direct traffic as the spokes report it, and pairs direct now.
    direct: (crate::state::DirectTotals, usize),
    /// Keyed groups, and what their members sent that was not taken.
    groups: (usize, crate::state::GroupCounters),
    /// The store's commits, and a cluster member's health.
    store: (
        tasuki_shell::store::CommitCounts,
        Option<tasuki_core::leadership::Health>,
    ),
}

impl Snapshot {
    /// Reads what the metrics need from the state and the data plane's status.
    fn take(st: &HubState, dp: Option<&DpStatus>) -> Self {
        let status = st.status(dp);
        let spokes = st.spoke_views(dp);
        let usage = crate::state::usage(dp);
        let keys = st.key_status(tasuki_shell::unix_now(), &usage);
        Self {
            status,
            spokes,
            usage,
            keys,
            logins: st.login_count(),
            pair_counters: st.pair_counters(),
            direct: st.direct_totals(),
            groups: st.group_counters(),
            store: (st.commit_counts(), st.cluster_health),
        }
    }
}

/// One metric family: its name, HELP text, TYPE and its series as
/// (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    rows: Vec<(String, u64)>,
}

/// A family of counters.
fn counter(name: &'static str, help: &'static str, rows: Vec<(String, u64)>) -> Family {
    Family {
        name,
        help,
        kind: "counter",
        rows,
    }
}

/// A family of gauges.
fn gauge(name: &'static str, help: &'static str, rows: Vec<(String, u64)>) -> Family {
    Family {
        name,
        help,
        kind: "gauge",
        rows,
    }
}

/// The series of a family without labels.
fn single(value: u64) -> Vec<(String, u64)> {
    vec![(String::new(), value)]
}

/// A series' label set, `{name="value",…}`, its values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Series told apart by one label, `name`, from (its value, the number).
fn by_label(name: &str, series: &[(&str, u64)]) -> Vec<(String, u64)> {
    series
        .iter()
        .map(|&(value, n)| (labels(&[(name, value)]), n))
        .collect()
}

/// The data plane's hub-wide counters: datagrams, packets, handshakes, drops.
fn traffic_families(c: &Counters) -> Vec<Family> {
    let drops: Vec<(&str, u64)> = tasuki_core::routing::DropReason::ALL
        .iter()
        .map(|r| (r.name(), c.dropped.get(r.name()).copied().unwrap_or(0)))
        .collect();
    vec![
        counter(
            "tasuki_datagrams_total",
            "UDP datagrams on the data port.",
            by_label("direction", &[("rx", c.rx_datagrams), ("tx", c.tx_datagrams)]),
        ),
        counter(
            "tasuki_packets_total",
            "Inner packets by path.",
            by_label(
                "path",
                &[
                    ("relayed", c.relayed),
                    ("to_tun", c.to_tun),
                    ("from_tun", c.from_tun),
                ],
            ),
        ),
        counter(
            "tasuki_branch_packets_total",
            "Inner packets into child hubs' links (to) and out of them (from): traffic of the hub tree's other branches.",
            by_label("direction", &[("to", c.to_branches), ("from", c.from_branches)]),
        ),
        counter(
            "tasuki_multicast_delivered_total",
            "Keyed groups' multicast copies sealed to member spokes (drops: tasuki_drops_total{reason=~\"multicast_.*\"}).",
            single(c.multicast),
        ),
        counter(
            "tasuki_handshakes_total",
            "WireGuard handshakes answered.",
            single(c.handshakes),
        ),
        counter(
            "tasuki_handshake_failures_total",
            "Answered handshakes the peer never used: it initiated again instead of sending data (a wrong or ended preshared key, or a lost answer).",
            single(c.handshake_failures),
        ),
        counter(
            "tasuki_cookie_replies_total",
            "Cookie replies sent instead of handshakes while under load.",
            single(c.cookies),
        ),
        counter(
            "tasuki_held_packets_total",
            "Inner packets held for a WireGuard handshake before they were sent.",
            single(c.queued),
        ),
        counter(
            "tasuki_receive_errors_total",
            "Failed reads of the UDP socket or the TUN.",
            single(c.receive_errors),
        ),
        counter(
            "tasuki_drops_total",
            "Dropped packets by reason.",
            by_label("reason", &drops),
        ),
    ]
}

/// Per spoke link: bytes, packets, rotations and the epoch in use.
fn link_families(snap: &Snapshot) -> Vec<Family> {
    let spoke = |name: &str| labels(&[("spoke", name)]);
    let link_bytes = snap
        .spokes
        .iter()
        .flat_map(|s| {
            let rx = labels(&[("spoke", &s.name), ("direction", "rx")]);
            let tx = labels(&[("spoke", &s.name), ("direction", "tx")]);
            [(rx, s.rx_bytes), (tx, s.tx_bytes)]
        })
        .collect();
    let link_packets = snap
        .spokes
        .iter()
        .map(|s| {
            let packets = snap.usage.get(&s.id).map_or(0, |u| u.packets);
            (spoke(&s.name), packets)
        })
        .collect();
    let per_key = |value: fn(&LinkKeyView) -> u64| -> Vec<(String, u64)> {
        snap.keys
            .iter()
            .map(|k| (spoke(&k.spoke), value(k)))
            .collect()
    };
    vec![
        counter(
            "tasuki_link_bytes_total",
            "Datagram bytes per spoke link.",
            link_bytes,
        ),
        counter(
            "tasuki_link_packets_total",
            "Datagrams per spoke link.",
            link_packets,
        ),
        counter(
            "tasuki_rotations_total",
            "Completed key rotations per link.",
            per_key(|k| k.rotations),
        ),
        gauge(
            "tasuki_key_epoch",
            "Key epoch carrying traffic per link.",
            per_key(|k| k.epoch),
        ),
    ]
}

/// The hub as a whole: spokes by state, the access policy, logins and
/// control connections.
fn state_families(snap: &Snapshot) -> Vec<Family> {
    let status = &snap.status;
    let spokes = ["active", "pending", "revoked", "denied"]
        .iter()
        .map(|&state| {
            let n = snap.spokes.iter().filter(|s| s.state == state).count();
            (labels(&[("state", state)]), n as u64)
        })
        .collect();
    let enforcing = status.access_mode == tasuki_core::access::Mode::Enforce;
    vec![
        gauge("tasuki_spokes", "Enrolled spokes by state.", spokes),
        gauge(
            "tasuki_access_enforcing",
            "1 while the access rules decide, 0 while the policy is open.",
            single(u64::from(enforcing)),
        ),
        gauge(
            "tasuki_access_flows",
            "Flows the access policy allowed and tracks for their replies.",
            single(status.counters.access_flows),
        ),
        gauge(
            "tasuki_logins",
            "Users logged in, over all spokes.",
            single(snap.logins as u64),
        ),
        gauge(
            "tasuki_control_connections",
            "Open control connections.",
            single(status.control_connections as u64),
        ),
    ]
}

/// Direct mode: the pairs, their paths and traffic as the spokes report
/// them, and what the hub would not take.
fn direct_families(snap: &Snapshot) -> Vec<Family> {
    vec![
        gauge(
            "tasuki_pairs",
            "Spoke pairs keyed for direct mode.",
            single(snap.status.pairs as u64),
        ),
        gauge(
            "tasuki_pair_paths_direct",
            "Pair holders whose last report says their traffic goes direct.",
            single(snap.direct.1 as u64),
        ),
        counter(
            "tasuki_direct_packets_total",
            "Inner packets spokes sent and received direct, as they report them (relayed ones are tasuki_packets_total{path=\"relayed\"}).",
            by_label(
                "direction",
                &[("tx", snap.direct.0.tx_packets), ("rx", snap.direct.0.rx_packets)],
            ),
        ),
        counter(
            "tasuki_direct_bytes_total",
            "Datagram bytes spokes sent and received direct, as they report them.",
            by_label(
                "direction",
                &[("tx", snap.direct.0.tx_bytes), ("rx", snap.direct.0.rx_bytes)],
            ),
        ),
        counter(
            "tasuki_direct_upgrades_total",
            "Times a pair's direct path took over from the relay.",
            single(snap.direct.0.upgrades),
        ),
        counter(
            "tasuki_direct_fallbacks_total",
            "Times a direct path stopped answering and the relay took over again.",
            single(snap.direct.0.fallbacks),
        ),
        counter(
            "tasuki_direct_punch_failures_total",
            "Rounds of hole-punching probes nobody answered.",
            single(snap.direct.0.punch_failures),
        ),
        counter(
            "tasuki_pair_requests_refused_total",
            "Pair requests refused (a reason was sent back).",
            single(snap.pair_counters.refused),
        ),
        counter(
            "tasuki_pair_requests_flooded_total",
            "Pair requests over a spoke's budget, dropped unanswered.",
            single(snap.pair_counters.flooded),
        ),
        counter(
            "tasuki_pair_reports_unknown_total",
            "Pair reports about a pair the hub does not key, or from a spoke that does not hold it.",
            single(snap.pair_counters.unknown),
        ),
    ]
}

/// Keyed groups: how many, their rotations, and reports not taken.
fn group_families(snap: &Snapshot) -> Vec<Family> {
    let (keyed, counters) = snap.groups;
    vec![
        gauge(
            "tasuki_keyed_groups",
            "Groups with key epochs of their own.",
            single(keyed as u64),
        ),
        counter(
            "tasuki_group_rotations_total",
            "Group epochs issued since the hub started (rotations, members that left).",
            single(counters.rotations),
        ),
        counter(
            "tasuki_group_reports_unknown_total",
            "Group reports about a group the hub does not key, or from a spoke that holds none of it.",
            single(counters.unknown),
        ),
    ]
}

/// The families as Prometheus text, in the order given.
fn write_families(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let (name, help, kind) = (f.name, f.help, f.kind);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in &f.rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    out
}
