//! Hostile traffic for the flood and fault tests: garbage datagrams,
//! misbehaving control connections, WireGuard handshake floods.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(crate) fn udp_garbage(addr: SocketAddr, count: u64) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind")?;
    let mut rng = XorShift::random();
    let mut buf = vec![0u8; 1500];
    for i in 0..count {
        // A mix: pure noise, and noise shaped like each WireGuard message
        // type (right type byte, zero reserved bytes, plausible length).
        let len = match i % 5 {
            0 => {
                let len = rng.below(1501) as usize;
                rng.fill(&mut buf[..len]);
                len
            }
            kind => {
                let (ty, len) = match kind {
                    1 => (1u8, 148usize),
                    2 => (2, 92),
                    3 => (3, 64),
                    _ => (4, 32 + rng.below(1400) as usize),
                };
                rng.fill(&mut buf[..len]);
                buf[..4].copy_from_slice(&[ty, 0, 0, 0]);
                len
            }
        };
        // A full socket buffer is not an error worth stopping for.
        let _ = socket.send_to(&buf[..len], addr);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    emit(json!({"sent": count}))
}

pub(crate) fn tcp_garbage(addr: SocketAddr) -> Result<()> {
    let mut rng = XorShift::random();
    let mut noise = vec![0u8; 4096];
    rng.fill(&mut noise);
    let mut closed_by_peer = 0u32;

    // 1. Random bytes, then wait (briefly) for the hub to hang up.
    let mut s = connect_retrying(addr, Duration::from_secs(5))?;
    let _ = s.write_all(&noise);
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                closed_by_peer += 1;
                break;
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed_by_peer += 1;
                break;
            }
            Err(_) => break,
        }
    }
    drop(s);

    // 2. An oversized frame length (0xFFFF) then only 10 bytes, then close.
    let mut s = connect_retrying(addr, Duration::from_secs(5))?;
    let _ = s.write_all(&[0xFF, 0xFF]);
    let _ = s.write_all(&noise[..10]);
    drop(s);

    // 3. A well-formed frame holding garbage instead of a handshake.
    let mut s = connect_retrying(addr, Duration::from_secs(5))?;
    let _ = s.write_all(&[0x00, 0x40]);
    let _ = s.write_all(&noise[..64]);
    let _ = s.shutdown(Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            closed_by_peer += 1;
            break;
        }
    }
    drop(s);

    // 4. An empty connection.
    let s = connect_retrying(addr, Duration::from_secs(5))?;
    drop(s);

    emit(json!({"connections": 4, "closed_by_peer": closed_by_peer}))
}

/// Floods `addr` with WireGuard handshake initiations that pass the hub's
/// first check (MAC1, keyed by the hub's public key from `invitation`) but
/// come from keys the hub never enrolled: the load that makes a WireGuard
/// responder demand cookies. Prints how many were sent and how many cookie
/// replies came back.
pub(crate) fn handshake_flood(
    addr: SocketAddr,
    invitation: &str,
    seconds: u64,
    sources: &[Ipv4Addr],
) -> Result<()> {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
    let invitation = tasuki_core::invitation::Invitation::decode(invitation)
        .map_err(|e| anyhow::anyhow!("invitation: {e}"))?;
    let hub = XPublic::from(invitation.hub_key.0);
    // A few hundred distinct initiations, made once and replayed: each costs
    // the sender a Diffie-Hellman, the hub only a MAC check while under load.
    let mut initiations = Vec::new();
    let mut buf = vec![0u8; 256];
    for i in 0..256u32 {
        let secret = StaticSecret::random_from_rng(rand_core::OsRng);
        let mut tunn = Tunn::new(secret, hub, None, None, i, None);
        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, false) {
            initiations.push(p.to_vec());
        }
    }
    anyhow::ensure!(!initiations.is_empty(), "could not make an initiation");
    let mut sockets = Vec::new();
    for src in sources {
        let socket = UdpSocket::bind((*src, 0)).with_context(|| format!("bind {src}"))?;
        socket.set_nonblocking(true).context("nonblocking")?;
        sockets.push(socket);
    }
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let (mut sent, mut cookies, mut other) = (0u64, 0u64, 0u64);
    let mut reply = [0u8; 256];
    while std::time::Instant::now() < end {
        for (i, init) in initiations.iter().enumerate() {
            let socket = &sockets[i % sockets.len()];
            if socket.send_to(init, addr).is_ok() {
                sent += 1;
            }
        }
        for socket in &sockets {
            while let Ok((n, _)) = socket.recv_from(&mut reply) {
                if n == 64 && reply[0] == 3 {
                    cookies += 1;
                } else {
                    other += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    emit(serde_json::json!({"sent": sent, "cookie_replies": cookies, "other_replies": other}))
}
