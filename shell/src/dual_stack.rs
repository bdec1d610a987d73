//! Sockets for both address families: an IPv6 socket bound to `[::]` that
//! takes IPv4 too (as IPv4-mapped addresses), so the hub answers spokes of
//! either family on one port and a spoke follows its hub from one family to
//! the other on one socket. Addresses leave this module as they are written
//! (`192.0.2.1:51820`, never `[::ffff:192.0.2.1]:51820`), so counters,
//! budgets and logs see one address per peer whichever way it came.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Pending connections the control listener holds.
const LISTEN_BACKLOG: i32 = 1024;

/// `addr` as people write it: an IPv4-mapped IPv6 address as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// `addr` as an IPv6 socket sends to it: IPv4 as IPv4-mapped.
pub fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

/// The address that asks for both families on `port`.
pub fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
}

/// A UDP socket bound to `addr`. For `[::]:port`, one socket for both
/// families, or IPv4 only on a machine without IPv6.
pub fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bound(addr, Type::DGRAM, Protocol::UDP).map(Into::into)
}

/// A non-blocking TCP listener on `addr`, for both families as
/// [`udp_socket`].
pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = bound(addr, Type::STREAM, Protocol::TCP)?;
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock.into())
}

fn bound(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    if addr.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return socket_on(addr, ty, proto, None);
    }
    match socket_on(addr, ty, proto, Some(false)) {
        Ok(sock) => Ok(sock),
        // No IPv6 on this machine; anything else (the port in use) is an
        // error to report, not a reason to carry less.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
            ) =>
        {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::warn!(error = %e, "no IPv6 socket here: listening on IPv4 only");
            socket_on(v4, ty, proto, None)
        }
        Err(e) => Err(e),
    }
}

/// A non-blocking socket bound to `addr`; `only_v6` set where given.
fn socket_on(
    addr: SocketAddr,
    ty: Type,
    proto: Protocol,
    only_v6: Option<bool>,
) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if let Some(only) = only_v6 {
        sock.set_only_v6(only)?;
    }
    if ty == Type::STREAM {
        // As the standard library's listeners: a restarted hub binds its
        // port again while old connections linger in TIME_WAIT.
        sock.set_reuse_address(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_canonical_undo_each_other() {
        let v4: SocketAddr = "192.0.2.7:51820".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:51820".parse().unwrap();
        assert_eq!(mapped(v4), "[::ffff:192.0.2.7]:51820".parse().unwrap());
        assert_eq!(canonical(mapped(v4)), v4);
        assert_eq!(mapped(v6), v6);
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn one_socket_on_any_takes_both_families() {
        let sock = udp_socket(any(0)).unwrap();
        let port = sock.local_addr().unwrap().port();
        sock.set_nonblocking(false).unwrap();
        for from in ["127.0.0.1:0", "[::1]:0"] {
            let peer = std::net::UdpSocket::bind(from).unwrap();
            let to: SocketAddr = if from.starts_with('[') {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            };
            peer.send_to(b"hi", to).unwrap();
            let mut buf = [0u8; 8];
            let (n, seen) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"hi");
            assert_eq!(canonical(seen), peer.local_addr().unwrap(), "from {from}");
        }
    }
}
