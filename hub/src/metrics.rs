//! A Prometheus text endpoint (`--metrics ADDR`, off by default): counters
//! per link, drops by reason, handshakes, rotations, spokes by state, logins.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::dataplane::DpStatus;
use crate::state::{HubState, SharedState};
use anyhow::{Context, Result};
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

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text for the hub's current state.
/// `dp` is the data plane's status, asked for with the state unlocked.
pub(crate) fn render(st: &HubState, dp: Option<&DpStatus>) -> String {
    let status = st.status(dp);
    let spokes = st.spoke_views(dp);
    let usage = crate::state::usage(dp);
    let keys = st.key_status(tasuki_shell::unix_now(), &usage);
    let mut out = String::new();
    let c = &status.counters;
    let mut counter = |name: &str, help: &str, rows: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    counter(
        "tasuki_datagrams_total",
        "UDP datagrams on the data port.",
        &[
            ("{direction=\"rx\"}".into(), c.rx_datagrams),
            ("{direction=\"tx\"}".into(), c.tx_datagrams),
        ],
    );
    counter(
        "tasuki_packets_total",
        "Inner packets by path.",
        &[
            ("{path=\"relayed\"}".into(), c.relayed),
            ("{path=\"to_tun\"}".into(), c.to_tun),
            ("{path=\"from_tun\"}".into(), c.from_tun),
        ],
    );
    counter(
        "tasuki_handshakes_total",
        "WireGuard handshakes answered.",
        &[(String::new(), c.handshakes)],
    );
    counter(
        "tasuki_handshake_failures_total",
        "Answered handshakes the peer never used: it initiated again instead of sending data (a wrong or ended preshared key, or a lost answer).",
        &[(String::new(), c.handshake_failures)],
    );
    counter(
        "tasuki_cookie_replies_total",
        "Cookie replies sent instead of handshakes while under load.",
        &[(String::new(), c.cookies)],
    );
    counter(
        "tasuki_held_packets_total",
        "Inner packets held for a WireGuard handshake before they were sent.",
        &[(String::new(), c.queued)],
    );
    counter(
        "tasuki_receive_errors_total",
        "Failed reads of the UDP socket or the TUN.",
        &[(String::new(), c.receive_errors)],
    );
    let drops: Vec<(String, u64)> = tasuki_core::routing::DropReason::ALL
        .iter()
        .map(|r| {
            let n = c.dropped.get(r.name()).copied().unwrap_or(0);
            (format!("{{reason=\"{}\"}}", r.name()), n)
        })
        .collect();
    counter("tasuki_drops_total", "Dropped packets by reason.", &drops);
    let mut link_bytes = Vec::new();
    for s in &spokes {
        let n = escape(&s.name);
        link_bytes.push((format!("{{spoke=\"{n}\",direction=\"rx\"}}"), s.rx_bytes));
        link_bytes.push((format!("{{spoke=\"{n}\",direction=\"tx\"}}"), s.tx_bytes));
    }
    counter(
        "tasuki_link_bytes_total",
        "Datagram bytes per spoke link.",
        &link_bytes,
    );
    let link_packets: Vec<(String, u64)> = spokes
        .iter()
        .map(|s| {
            let p = usage.get(&s.id).map_or(0, |u| u.packets);
            (format!("{{spoke=\"{}\"}}", escape(&s.name)), p)
        })
        .collect();
    counter(
        "tasuki_link_packets_total",
        "Datagrams per spoke link.",
        &link_packets,
    );
    let rotations: Vec<(String, u64)> = keys
        .iter()
        .map(|k| (format!("{{spoke=\"{}\"}}", escape(&k.spoke)), k.rotations))
        .collect();
    counter(
        "tasuki_rotations_total",
        "Completed key rotations per link.",
        &rotations,
    );
    let _ = writeln!(out, "# HELP tasuki_key_epoch Key epoch carrying traffic per link.\n# TYPE tasuki_key_epoch gauge");
    for k in &keys {
        let _ = writeln!(
            out,
            "tasuki_key_epoch{{spoke=\"{}\"}} {}",
            escape(&k.spoke),
            k.epoch
        );
    }
    let _ = writeln!(
        out,
        "# HELP tasuki_spokes Enrolled spokes by state.\n# TYPE tasuki_spokes gauge"
    );
    for state in ["active", "pending", "revoked", "denied"] {
        let n = spokes.iter().filter(|s| s.state == state).count();
        let _ = writeln!(out, "tasuki_spokes{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP tasuki_access_enforcing 1 while the access rules decide, 0 while the policy is open.\n# TYPE tasuki_access_enforcing gauge\ntasuki_access_enforcing {}",
        u8::from(status.access_mode == tasuki_core::access::Mode::Enforce)
    );
    let _ = writeln!(
        out,
        "# HELP tasuki_access_flows Flows the access policy allowed and tracks for their replies.\n# TYPE tasuki_access_flows gauge\ntasuki_access_flows {}",
        c.access_flows
    );
    let _ = writeln!(
        out,
        "# HELP tasuki_logins Users logged in, over all spokes.\n# TYPE tasuki_logins gauge"
    );
    let _ = writeln!(out, "tasuki_logins {}", st.login_count());
    let _ = writeln!(
        out,
        "# HELP tasuki_control_connections Open control connections.\n# TYPE tasuki_control_connections gauge\ntasuki_control_connections {}",
        status.control_connections
    );
    out
}
