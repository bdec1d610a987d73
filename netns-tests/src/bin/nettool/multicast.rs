//! Multicast helpers for the keyed groups' tests: a numbered stream into
//! a group address and a receiver that lists what came, an mDNS query and
//! a one-name mDNS responder.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The multicast commands' arguments, or `None` for another command.
pub(crate) fn parse(
    name: &str,
    pos: &[&str],
    ready: Option<PathBuf>,
) -> Option<Result<Command, UsageError>> {
    let arity = |ok: bool| -> Result<(), UsageError> {
        if ok {
            Ok(())
        } else {
            Err(UsageError(format!(
                "{name}: wrong number of arguments ({})",
                pos.len()
            )))
        }
    };
    let no_ready = |ready: &Option<PathBuf>| match ready {
        Some(_) => Err(UsageError(format!("{name} does not take --ready"))),
        None => Ok(()),
    };
    if !matches!(
        name,
        "mcast-recv" | "mcast-send" | "mdns-respond" | "mdns-query"
    ) {
        return None;
    }
    let parsed = (|| match name {
        "mcast-recv" => {
            arity(pos.len() == 4)?;
            Ok(Command::McastRecv {
                group: ipv4(pos[0], "GROUP")?,
                port: num(pos[1], "PORT")?,
                ifaddr: ipv4(pos[2], "IFADDR")?,
                seconds: num(pos[3], "SECONDS")?,
                ready: ready.clone(),
            })
        }
        "mcast-send" => {
            arity(pos.len() == 5 || pos.len() == 6)?;
            no_ready(&ready)?;
            Ok(Command::McastSend {
                group: ipv4(pos[0], "GROUP")?,
                port: num(pos[1], "PORT")?,
                ifaddr: ipv4(pos[2], "IFADDR")?,
                count: num(pos[3], "COUNT")?,
                pps: num(pos[4], "PPS")?,
                size: pos.get(5).map_or(Ok(64), |s| num(s, "SIZE"))?,
            })
        }
        "mdns-respond" => {
            arity(pos.len() == 3)?;
            Ok(Command::MdnsRespond {
                name: pos[0].to_string(),
                ifaddr: ipv4(pos[1], "IFADDR")?,
                seconds: num(pos[2], "SECONDS")?,
                ready: ready.clone(),
            })
        }
        "mdns-query" => {
            arity(pos.len() == 3)?;
            no_ready(&ready)?;
            Ok(Command::MdnsQuery {
                name: pos[0].to_string(),
                ifaddr: ipv4(pos[1], "IFADDR")?,
                seconds: num(pos[2], "SECONDS")?,
            })
        }
        other => Err(UsageError(format!("unknown command {other:?}"))),
    })();
    Some(parsed)
}

const MDNS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;

/// A socket bound to `group:port` (shared with other listeners) that has
/// joined `group` on the interface with address `ifaddr`.
fn joined(group: Ipv4Addr, port: u16, ifaddr: Ipv4Addr) -> Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(group, port)))
        .with_context(|| format!("cannot bind {group}:{port}"))?;
    s.join_multicast_v4(&group, &ifaddr)
        .with_context(|| format!("cannot join {group} on {ifaddr}"))?;
    Ok(s.into())
}

/// A socket that sends multicast out of the interface with `ifaddr`.
fn sender(ifaddr: Ipv4Addr) -> Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(ifaddr, 0)))
        .with_context(|| format!("cannot bind {ifaddr}"))?;
    s.set_multicast_if_v4(&ifaddr)?;
    s.set_multicast_loop_v4(false)?;
    s.set_multicast_ttl_v4(1)?;
    Ok(s.into())
}

/// Lists the numbered datagrams that reach `group:port` for `seconds`:
/// prints {"received":[N,...],"sources":[IP,...]} in arrival order.
pub(crate) fn mcast_recv(
    group: Ipv4Addr,
    port: u16,
    ifaddr: Ipv4Addr,
    seconds: u64,
    ready: Option<PathBuf>,
) -> Result<()> {
    let socket = joined(group, port, ifaddr)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    announce(ready)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut received = Vec::new();
    let mut sources = BTreeSet::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if n >= 4 {
            received.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            sources.insert(from.ip().to_string());
        }
    }
    emit(json!({"received": received, "sources": sources}))
}

/// Sends `count` datagrams numbered from 0 to `group:port`, `pps` a
/// second, `size` bytes each: prints {"sent":N}.
pub(crate) fn mcast_send(
    group: Ipv4Addr,
    port: u16,
    ifaddr: Ipv4Addr,
    (count, pps, size): (u32, u32, usize),
) -> Result<()> {
    let socket = sender(ifaddr)?;
    let start = Instant::now();
    let mut payload = vec![0u8; size.max(4)];
    let mut sent = 0u64;
    for n in 0..count {
        let due = start + Duration::from_secs_f64(f64::from(n) / f64::from(pps.max(1)));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        payload[..4].copy_from_slice(&n.to_be_bytes());
        if socket.send_to(&payload, (group, port)).is_ok() {
            sent += 1;
        }
    }
    emit(json!({"sent": sent}))
}

/// `name` as DNS labels.
fn labels(name: &str) -> Vec<u8> {
    name.trim_end_matches('.')
        .split('.')
        .flat_map(|l| {
            std::iter::once(l.len() as u8).chain(l.bytes().map(|b| b.to_ascii_lowercase()))
        })
        .chain(std::iter::once(0))
        .collect()
}

/// Answers mDNS A queries for `name` with `ifaddr` for `seconds`: a
/// query from port 5353 by multicast, any other by unicast to the asker
/// (RFC 6762 6.7). Prints {"answered":N}.
pub(crate) fn mdns_respond(
    name: &str,
    ifaddr: Ipv4Addr,
    seconds: u64,
    ready: Option<PathBuf>,
) -> Result<()> {
    let socket = joined(MDNS, MDNS_PORT, ifaddr)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let reply_socket = sender(ifaddr)?;
    announce(ready)?;
    let wanted = labels(name);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut answered = 0u64;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let q = &buf[..n];
        let end = 12 + wanted.len();
        // A query (QR clear) with one question: our name, type A.
        if n < end + 4
            || q[2] & 0x80 != 0
            || q[12..end].to_ascii_lowercase() != wanted
            || q[end..end + 2] != [0, 1]
        {
            continue;
        }
        let legacy = from.port() != MDNS_PORT;
        let mut reply = Vec::with_capacity(64);
        reply.extend_from_slice(if legacy { &q[..2] } else { &[0, 0] });
        reply.extend_from_slice(&[0x84, 0x00]); // response, authoritative
        reply.extend_from_slice(&[0, u8::from(legacy), 0, 1, 0, 0, 0, 0]);
        if legacy {
            reply.extend_from_slice(&q[12..end + 4]);
        }
        reply.extend_from_slice(&wanted);
        reply.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        reply.extend_from_slice(&ifaddr.octets());
        let to: SocketAddr = if legacy {
            from
        } else {
            (MDNS, MDNS_PORT).into()
        };
        reply_socket.send_to(&reply, to).context("cannot answer")?;
        answered += 1;
    }
    emit(json!({"answered": answered}))
}

/// Asks for `name`'s A record by mDNS from `ifaddr` (again every half
/// second) for up to `seconds`: prints {"answer":IP,"from":IP}; exit 1
/// when no answer came.
pub(crate) fn mdns_query(name: &str, ifaddr: Ipv4Addr, seconds: u64) -> Result<()> {
    let socket = sender(ifaddr)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let wanted = labels(name);
    let mut query = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(&wanted);
    query.extend_from_slice(&[0, 1, 0, 1]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        socket
            .send_to(&query, (MDNS, MDNS_PORT))
            .context("cannot send the query")?;
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let r = &buf[..n];
        if n >= 16 && r[..2] == [0x12, 0x34] && r[2] & 0x80 != 0 {
            let a = &r[n - 4..];
            return emit(json!({
                "answer": Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string(),
                "from": from.ip().to_string(),
            }));
        }
    }
    bail!("no mDNS answer for {name} in {seconds} s")
}
