//! `tasuki-nettool`: a tiny traffic helper that the end-to-end tests run
//! inside network namespaces.
//!
//! Every subcommand prints one JSON line on stdout describing what it did, so
//! the tests can compare both ends of a transfer. Bad arguments print the
//! usage and exit with status 2; run-time failures print an error and exit
//! with status 1. Nothing here panics on user input.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{
    Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod attacks;
mod dns;
mod multicast;

use attacks::{handshake_flood, tcp_garbage, udp_garbage};
use dns::dns_server;
use multicast::{mcast_recv, mcast_send, mdns_query, mdns_respond};

const USAGE: &str = "\
usage: tasuki-nettool COMMAND ARGS...

  tcp-sink PORT [--ready PATH]      accept one TCP connection on 0.0.0.0:PORT, read to EOF,
                                    print {\"bytes\":N,\"sha256\":HEX}
  tcp-source ADDR:PORT BYTES        connect (retrying for 10 s), send BYTES of deterministic
                                    pseudo-random data, print {\"bytes\":N,\"sha256\":HEX}
  udp-sink PORT SECONDS [--ready PATH]
                                    count UDP datagrams for SECONDS,
                                    print {\"received\":N,\"sources\":[IP,...]}
  udp-send DST PORT COUNT           send COUNT ordinary UDP datagrams to DST:PORT
  forge SRC DST PORT                send one UDP datagram to DST:PORT whose IPv4 source is SRC
                                    (raw socket, header built by hand)
  udp-garbage ADDR:PORT COUNT       send COUNT random datagrams (some shaped like WireGuard
                                    messages) to ADDR:PORT
  tcp-garbage ADDR:PORT             open connections that send random bytes, an oversized
                                    frame length, a garbage frame, and nothing at all
  dns-server NAME FILE SECONDS [--ready PATH]
                                    answer DNS A queries for NAME on 127.0.0.1:53 with the
                                    IPv4 address in FILE (read anew for every query)
  handshake-flood ADDR:PORT INVITATION SECONDS [SRC,SRC,...]
                                    send WireGuard initiations with a valid MAC1 (hub key
                                    from INVITATION) from unknown keys for SECONDS, from
                                    each source address given (default: any), print
                                    {\"sent\":N,\"cookie_replies\":N,\"other_replies\":N}
  http-get ADDR:PORT PATH           GET PATH over HTTP/1.1, print the response body;
                                    exit 1 unless the status is 200
  mcast-recv GROUP PORT IFADDR SECONDS [--ready PATH]
                                    join GROUP on the interface with IFADDR, list the numbered
                                    datagrams to GROUP:PORT, print {\"received\":[N,...],\"sources\":[IP,...]}
  mcast-send GROUP PORT IFADDR COUNT PPS [SIZE]
                                    send COUNT datagrams numbered from 0 to GROUP:PORT out of
                                    IFADDR's interface, PPS a second, print {\"sent\":N}
  mdns-respond NAME IFADDR SECONDS [--ready PATH]
                                    answer mDNS A queries for NAME with IFADDR
  mdns-query NAME IFADDR SECONDS    ask for NAME by mDNS, print {\"answer\":IP,\"from\":IP}

With --ready PATH, the sinks create PATH once bound; they always print
`listening` on stderr at that point.";

/// A command-line mistake: print the usage and exit 2.
struct UsageError(String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(UsageError(msg)) => {
            eprintln!("tasuki-nettool: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasuki-nettool: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A parsed subcommand.
enum Command {
    TcpSink {
        port: u16,
        ready: Option<PathBuf>,
    },
    TcpSource {
        addr: SocketAddr,
        bytes: u64,
    },
    UdpSink {
        port: u16,
        seconds: u64,
        ready: Option<PathBuf>,
    },
    UdpSend {
        dst: Ipv4Addr,
        port: u16,
        count: u64,
    },
    Forge {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
    },
    UdpGarbage {
        addr: SocketAddr,
        count: u64,
    },
    TcpGarbage {
        addr: SocketAddr,
    },
    DnsServer {
        name: String,
        file: PathBuf,
        seconds: u64,
        ready: Option<PathBuf>,
    },
    HandshakeFlood {
        addr: SocketAddr,
        invitation: String,
        seconds: u64,
        sources: Vec<Ipv4Addr>,
    },
    HttpGet {
        addr: SocketAddr,
        path: String,
    },
    McastRecv {
        group: Ipv4Addr,
        port: u16,
        ifaddr: Ipv4Addr,
        seconds: u64,
        ready: Option<PathBuf>,
    },
    McastSend {
        group: Ipv4Addr,
        port: u16,
        ifaddr: Ipv4Addr,
        count: u32,
        pps: u32,
        size: usize,
    },
    MdnsRespond {
        name: String,
        ifaddr: Ipv4Addr,
        seconds: u64,
        ready: Option<PathBuf>,
    },
    MdnsQuery {
        name: String,
        ifaddr: Ipv4Addr,
        seconds: u64,
    },
}

fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((name, rest)) = args.split_first() else {
        return Err(UsageError("missing command".into()));
    };
    // Pull out `--ready PATH` wherever it is; everything else is positional.
    let mut ready = None;
    let mut pos: Vec<&str> = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ready" => match it.next() {
                Some(p) => ready = Some(PathBuf::from(p)),
                None => return Err(UsageError("--ready needs a PATH".into())),
            },
            "-h" | "--help" => return Err(UsageError("help".into())),
            other => pos.push(other),
        }
    }
    let want = |n: usize| -> Result<(), UsageError> {
        if pos.len() == n {
            Ok(())
        } else {
            Err(UsageError(format!(
                "{name} takes {n} argument(s), got {}",
                pos.len()
            )))
        }
    };
    let no_ready = |ready: &Option<PathBuf>| -> Result<(), UsageError> {
        match ready {
            Some(_) => Err(UsageError(format!("{name} does not take --ready"))),
            None => Ok(()),
        }
    };
    let command = match name.as_str() {
        "tcp-sink" => {
            want(1)?;
            Command::TcpSink {
                port: num(pos[0], "PORT")?,
                ready,
            }
        }
        "tcp-source" => {
            want(2)?;
            no_ready(&ready)?;
            Command::TcpSource {
                addr: sockaddr(pos[0])?,
                bytes: num(pos[1], "BYTES")?,
            }
        }
        "udp-sink" => {
            want(2)?;
            Command::UdpSink {
                port: num(pos[0], "PORT")?,
                seconds: num(pos[1], "SECONDS")?,
                ready,
            }
        }
        "http-get" => {
            want(2)?;
            no_ready(&ready)?;
            Command::HttpGet {
                addr: sockaddr(pos[0])?,
                path: pos[1].to_string(),
            }
        }
        "udp-send" => {
            want(3)?;
            no_ready(&ready)?;
            Command::UdpSend {
                dst: ipv4(pos[0], "DST")?,
                port: num(pos[1], "PORT")?,
                count: num(pos[2], "COUNT")?,
            }
        }
        "forge" => {
            want(3)?;
            no_ready(&ready)?;
            Command::Forge {
                src: ipv4(pos[0], "SRC")?,
                dst: ipv4(pos[1], "DST")?,
                port: num(pos[2], "PORT")?,
            }
        }
        "udp-garbage" => {
            want(2)?;
            no_ready(&ready)?;
            Command::UdpGarbage {
                addr: sockaddr(pos[0])?,
                count: num(pos[1], "COUNT")?,
            }
        }
        "tcp-garbage" => {
            want(1)?;
            no_ready(&ready)?;
            Command::TcpGarbage {
                addr: sockaddr(pos[0])?,
            }
        }
        "dns-server" => {
            want(3)?;
            Command::DnsServer {
                name: pos[0].to_string(),
                file: PathBuf::from(pos[1]),
                seconds: num(pos[2], "SECONDS")?,
                ready,
            }
        }
        "handshake-flood" => {
            if pos.len() != 3 {
                want(4)?;
            }
            no_ready(&ready)?;
            Command::HandshakeFlood {
                addr: sockaddr(pos[0])?,
                invitation: pos[1].to_string(),
                seconds: num(pos[2], "SECONDS")?,
                sources: pos
                    .get(3)
                    .copied()
                    .unwrap_or("0.0.0.0")
                    .split(',')
                    .map(|a| ipv4(a, "SOURCE"))
                    .collect::<Result<_, _>>()?,
            }
        }
        "mcast-recv" => {
            want(4)?;
            Command::McastRecv {
                group: ipv4(pos[0], "GROUP")?,
                port: num(pos[1], "PORT")?,
                ifaddr: ipv4(pos[2], "IFADDR")?,
                seconds: num(pos[3], "SECONDS")?,
                ready,
            }
        }
        "mcast-send" => {
            if pos.len() != 5 {
                want(6)?;
            }
            no_ready(&ready)?;
            Command::McastSend {
                group: ipv4(pos[0], "GROUP")?,
                port: num(pos[1], "PORT")?,
                ifaddr: ipv4(pos[2], "IFADDR")?,
                count: num(pos[3], "COUNT")?,
                pps: num(pos[4], "PPS")?,
                size: pos.get(5).map_or(Ok(64), |s| num(s, "SIZE"))?,
            }
        }
        "mdns-respond" => {
            want(3)?;
            Command::MdnsRespond {
                name: pos[0].to_string(),
                ifaddr: ipv4(pos[1], "IFADDR")?,
                seconds: num(pos[2], "SECONDS")?,
                ready,
            }
        }
        "mdns-query" => {
            want(3)?;
            no_ready(&ready)?;
            Command::MdnsQuery {
                name: pos[0].to_string(),
                ifaddr: ipv4(pos[1], "IFADDR")?,
                seconds: num(pos[2], "SECONDS")?,
            }
        }
        other => return Err(UsageError(format!("unknown command {other:?}"))),
    };
    Ok(command)
}

fn num<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, UsageError> {
    text.parse()
        .map_err(|_| UsageError(format!("{what} must be a number, got {text:?}")))
}

fn ipv4(text: &str, what: &str) -> Result<Ipv4Addr, UsageError> {
    text.parse()
        .map_err(|_| UsageError(format!("{what} must be an IPv4 address, got {text:?}")))
}

fn sockaddr(text: &str) -> Result<SocketAddr, UsageError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| UsageError(format!("expected ADDR:PORT, got {text:?}")))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::TcpSink { port, ready } => tcp_sink(port, ready),
        Command::TcpSource { addr, bytes } => tcp_source(addr, bytes),
        Command::UdpSink {
            port,
            seconds,
            ready,
        } => udp_sink(port, seconds, ready),
        Command::UdpSend { dst, port, count } => udp_send(dst, port, count),
        Command::HttpGet { addr, path } => http_get(addr, &path),
        Command::Forge { src, dst, port } => forge(src, dst, port),
        Command::UdpGarbage { addr, count } => udp_garbage(addr, count),
        Command::TcpGarbage { addr } => tcp_garbage(addr),
        Command::DnsServer {
            name,
            file,
            seconds,
            ready,
        } => dns_server(&name, &file, seconds, ready),
        Command::HandshakeFlood {
            addr,
            invitation,
            seconds,
            sources,
        } => handshake_flood(addr, &invitation, seconds, &sources),
        Command::McastRecv {
            group,
            port,
            ifaddr,
            seconds,
            ready,
        } => mcast_recv(group, port, ifaddr, seconds, ready),
        Command::McastSend {
            group,
            port,
            ifaddr,
            count,
            pps,
            size,
        } => mcast_send(group, port, ifaddr, (count, pps, size)),
        Command::MdnsRespond {
            name,
            ifaddr,
            seconds,
            ready,
        } => mdns_respond(&name, ifaddr, seconds, ready),
        Command::MdnsQuery {
            name,
            ifaddr,
            seconds,
        } => mdns_query(&name, ifaddr, seconds),
    }
}

/// Says "bound and ready" on stderr and, if asked, with a file.
fn announce(ready: Option<PathBuf>) -> Result<()> {
    eprintln!("listening");
    if let Some(path) = ready {
        std::fs::write(&path, b"listening\n")
            .with_context(|| format!("cannot create ready file {}", path.display()))?;
    }
    Ok(())
}

/// Prints the one JSON result line and flushes it.
fn emit(value: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tcp_sink(port: u16, ready: Option<PathBuf>) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
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
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Seeded from the clock and the pid, for garbage.
    fn random() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Self(seed | 1)
    }
}

fn connect_retrying(addr: SocketAddr, for_how_long: Duration) -> Result<TcpStream> {
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

fn tcp_source(addr: SocketAddr, bytes: u64) -> Result<()> {
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

fn udp_sink(port: u16, seconds: u64, ready: Option<PathBuf>) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
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
                sources.insert(from.ip().to_string());
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

fn http_get(addr: SocketAddr, path: &str) -> Result<()> {
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

fn udp_send(dst: Ipv4Addr, port: u16, count: u64) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind")?;
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
fn inet_checksum(data: &[u8]) -> u16 {
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
fn build_udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Result<Vec<u8>> {
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

fn forge(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Result<()> {
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
