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
mod traffic;

use attacks::{handshake_flood, tcp_garbage, udp_garbage};
use dns::dns_server;
use multicast::{mcast_recv, mcast_send, mdns_query, mdns_respond};
use traffic::{
    connect_retrying, forge, http_get, tcp_sink, tcp_source, udp_send, udp_sink, XorShift,
};

const USAGE: &str = "\
usage: tasuki-nettool COMMAND ARGS...

  tcp-sink PORT [--ready PATH]      accept one TCP connection on [::]:PORT (IPv4 too), read to EOF,
                                    print {\"bytes\":N,\"sha256\":HEX}
  tcp-source ADDR:PORT BYTES        connect (retrying for 10 s), send BYTES of deterministic
                                    pseudo-random data, print {\"bytes\":N,\"sha256\":HEX}
  udp-sink PORT SECONDS [--ready PATH]
                                    count UDP datagrams to [::]:PORT (IPv4 too) for SECONDS,
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
        dst: std::net::IpAddr,
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
                dst: pos[0].parse().map_err(|_| {
                    UsageError(format!("DST must be an IP address, got {:?}", pos[0]))
                })?,
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
        other => match multicast::parse(other, &pos, ready) {
            Some(command) => command?,
            None => return Err(UsageError(format!("unknown command {other:?}"))),
        },
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
