//! Connecting to the hub by name or address: every address the name
//! resolves to is tried, the families taking turns, a new attempt starting
//! every [`ATTEMPT_DELAY`] while earlier ones still wait (happy eyeballs,
//! RFC 8305), and the first connection made is kept. A hub whose IPv4
//! address is black-holed is reached over IPv6 a quarter of a second
//! later, not after the whole timeout.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long one attempt has alone before the next starts beside it.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Most addresses tried for one name.
const MAX_ADDRESSES: usize = 8;

/// The endpoints a hub's `HOST:PORT` text names: one, or a cluster's
/// members separated by commas.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A connection to the first of `endpoints` that answers, tried in turn
/// from index `first` (the one that answered last time), each within an
/// equal share of `timeout` (at least [`MEMBER_TIMEOUT`]); returns it and
/// the index of the one that answered.
pub async fn connect_first(
    endpoints: &[String],
    first: usize,
    timeout: Duration,
) -> Result<(TcpStream, usize)> {
    let n = endpoints.len();
    if n == 0 {
        bail!("no hub endpoint to connect to");
    }
    if n == 1 {
        return Ok((connect(&endpoints[0], timeout).await?, 0));
    }
    let each = (timeout / n as u32).max(MEMBER_TIMEOUT);
    let mut failures = Vec::new();
    for k in 0..n {
        let i = (first + k) % n;
        match connect(&endpoints[i], each).await {
            Ok(stream) => return Ok((stream, i)),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!(
        "no member of the hub cluster answers: {}",
        failures.join("; ")
    )
}

/// The least time one member of a cluster is given to answer.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP connection to `endpoint` (`host:port`, `[v6]:port`), made within
/// `timeout` (name resolution included).
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    let resolved: Vec<SocketAddr> =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host(endpoint))
            .await
            .with_context(|| format!("timed out resolving {endpoint}"))?
            .with_context(|| format!("cannot resolve {endpoint}"))?
            .collect();
    let order = interleaved(resolved);
    if order.is_empty() {
        bail!("{endpoint} resolves to no address");
    }
    let mut next = order.into_iter();
    let mut attempts = JoinSet::new();
    let mut failures: Vec<String> = Vec::new();
    let give_up = tokio::time::sleep_until(deadline);
    tokio::pin!(give_up);
    let stagger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(stagger);
    loop {
        // The next address starts when the last attempt has had its time
        // alone, or at once when nothing is pending (all failed so far).
        if attempts.is_empty() || stagger.is_elapsed() {
            match next.next() {
                Some(addr) => {
                    start(&mut attempts, addr);
                    stagger
                        .as_mut()
                        .reset(tokio::time::Instant::now() + ATTEMPT_DELAY);
                }
                None if attempts.is_empty() => {
                    bail!("cannot connect to {endpoint}: {}", failures.join("; "))
                }
                None => {}
            }
        }
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((_, Ok(stream)))) => return Ok(stream),
                Some(Ok((addr, Err(e)))) => failures.push(format!("{addr}: {e}")),
                Some(Err(e)) => failures.push(format!("an attempt failed: {e}")),
                None => {}
            },
            _ = &mut stagger, if next.len() > 0 => {}
            _ = &mut give_up => {
                let tried = if failures.is_empty() { "no answer".to_owned() } else { failures.join("; ") };
                bail!("timed out connecting to {endpoint} ({tried})")
            }
        }
    }
}

fn start(attempts: &mut JoinSet<(SocketAddr, std::io::Result<TcpStream>)>, addr: SocketAddr) {
    attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
}

/// The resolver's order with the families taking turns, starting with the
/// family of its first answer (RFC 8305, section 4); at most
/// [`MAX_ADDRESSES`].
pub fn interleaved(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    same.reverse();
    other.reverse();
    let mut out = Vec::new();
    while out.len() < MAX_ADDRESSES && (!same.is_empty() || !other.is_empty()) {
        if let Some(a) = same.pop() {
            out.push(a);
        }
        if out.len() < MAX_ADDRESSES {
            if let Some(a) = other.pop() {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_families_take_turns_from_the_first_answer() {
        let got = interleaved(addrs(&[
            "192.0.2.1:1",
            "192.0.2.2:1",
            "[2001:db8::1]:1",
            "[2001:db8::2]:1",
            "192.0.2.3:1",
        ]));
        assert_eq!(
            got,
            addrs(&[
                "192.0.2.1:1",
                "[2001:db8::1]:1",
                "192.0.2.2:1",
                "[2001:db8::2]:1",
                "192.0.2.3:1",
            ])
        );
        let v6_first = interleaved(addrs(&["[2001:db8::1]:1", "192.0.2.1:1"]));
        assert!(v6_first[0].is_ipv6());
        assert!(interleaved(Vec::new()).is_empty());
        let many: Vec<String> = (0..20).map(|i| format!("192.0.2.{i}:1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(interleaved(addrs(&many)).len(), MAX_ADDRESSES);
    }

    #[tokio::test]
    async fn the_first_address_that_answers_is_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect(&format!("127.0.0.1:{port}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap().port(), port);
        // Nothing listens: the error names the address tried.
        drop(listener);
        let refused = connect(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).await;
        let text = format!("{:#}", refused.unwrap_err());
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
}
