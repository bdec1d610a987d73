//! The plain traffic helpers: TCP and UDP sinks and sources, an HTTP
//! GET, and a datagram with a forged source.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn tcp_sink(port: u16, ready: Option<PathBuf>) -> Result<()> {
    // Both families where IPv6 is on (IPv4 arrives mapped), else IPv4.
    let listener = TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .with_context(|| format!("cannot listen on TCP port {port}"))?;
    announce(ready)?;
    let (mut stream, peer) = listener.accept().context("accept")?;
    eprintln!("connection from {peer}");
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read"),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    emit(json!({"bytes": total, "sha256": hex(&hasher.finalize())}))
}

/// Deterministic xorshift64* stream.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A number in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Seeded from the clock and the pid, for garbage.
    pub(crate) fn random() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Self(seed | 1)
    }
}

pub(crate) fn connect_retrying(addr: SocketAddr, for_how_long: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + for_how_long;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("cannot connect to {addr}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub(crate) fn tcp_source(addr: SocketAddr, bytes: u64) -> Result<()> {
    let mut stream = connect_retrying(addr, Duration::from_secs(10))?;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        rng.fill(&mut buf[..n]);
        stream.write_all(&buf[..n]).context("write")?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    // Wait for the sink to close its end: then everything was delivered.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    emit(json!({"bytes": bytes, "sha256": hex(&hasher.finalize())}))
}

pub(crate) fn udp_sink(port: u16, seconds: u64, ready: Option<PathBuf>) -> Result<()> {
    // Both families where IPv6 is on (IPv4 arrives mapped), else IPv4.
    let socket = UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .with_context(|| format!("cannot bind UDP port {port}"))?;
    announce(ready)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut received: u64 = 0;
    let mut sources = BTreeSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        socket.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        match socket.recv_from(&mut buf) {
            Ok((_, from)) => {
                received += 1;
                sources.insert(from.ip().to_canonical().to_string());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
    emit(json!({"received": received, "sources": sources}))
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        anyhow::bail!("{status}");
    }
    print!("{body}");
    Ok(())
}

pub(crate) fn udp_send(dst: std::net::IpAddr, port: u16, count: u64) -> Result<()> {
    let any: std::net::IpAddr = if dst.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0)).context("bind")?;
    for i in 0..count {
        let payload = format!("tasuki-nettool datagram {i}");
        socket
            .send_to(payload.as_bytes(), (dst, port))
            .with_context(|| format!("send to {dst}:{port}"))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    emit(json!({"sent": count}))
}

/// The Internet checksum (RFC 1071) of `data`.
pub(crate) fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4+UDP packet from `src` to `dst:port` (UDP checksum 0, i.e. none).
pub(crate) fn build_udp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len()).context("payload too large")?;
    let total = u16::try_from(20 + 8 + payload.len()).context("payload too large")?;
    let mut p = Vec::with_capacity(usize::from(total));
    p.push(0x45); // version 4, IHL 5
    p.push(0); // DSCP/ECN
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&0x7a5bu16.to_be_bytes()); // identification
    p.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    p.push(64); // TTL
    p.push(17); // UDP
    p.extend_from_slice(&[0, 0]); // checksum, below
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = inet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    Ok(p)
}

pub(crate) fn forge(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Result<()> {
    // IPPROTO_RAW implies IP_HDRINCL: the kernel sends our header as is.
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("cannot open a raw socket (needs root or CAP_NET_RAW)")?;
    let packet = build_udp_packet(src, dst, port, b"tasuki-nettool forged datagram")?;
    let target = SockAddr::from(SocketAddrV4::new(dst, 0));
    let sent = socket
        .send_to(&packet, &target)
        .with_context(|| format!("raw send to {dst}"))?;
    if sent != packet.len() {
        bail!("raw send wrote {sent} of {} bytes", packet.len());
    }
    emit(json!({"sent": 1, "src": src.to_string(), "dst": dst.to_string(), "port": port}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn checksum_of_a_known_header() {
        // Example header from RFC 1071 discussions / Wikipedia.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(inet_checksum(&h), 0xb861);
    }

    #[test]
    fn built_packet_checks_out() {
        let p = build_udp_packet(
            Ipv4Addr::new(10, 77, 0, 99),
            Ipv4Addr::new(10, 77, 0, 3),
            9000,
            b"hi",
        )
        .unwrap();
        assert_eq!(p.len(), 30);
        assert_eq!(inet_checksum(&p[..20]), 0);
        assert_eq!(&p[12..16], &[10, 77, 0, 99]);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 9000);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &[][..],
            &["nope"][..],
            &["tcp-sink"][..],
            &["tcp-sink", "x"][..],
            &["tcp-source", "1.2.3.4", "10"][..],
            &["udp-send", "1.2.3.4", "9000"][..],
            &["forge", "a", "b", "c"][..],
            &["tcp-sink", "1", "--ready"][..],
            &["udp-send", "1.2.3.4", "9000", "1", "--ready", "x"][..],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} should be refused");
        }
        assert!(parse(&args(&["tcp-sink", "9000", "--ready", "/tmp/x"])).is_ok());
        assert!(parse(&args(&["tcp-source", "10.77.0.3:9000", "100"])).is_ok());
    }

    #[test]
    fn source_stream_is_deterministic() {
        let mut a = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut b = XorShift(0x9E37_79B9_7F4A_7C15);
        let (mut x, mut y) = ([0u8; 37], [0u8; 37]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 37]);
    }
}
