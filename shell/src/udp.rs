//! The data-plane UDP socket, read and written in batches.
//!
//! quinn-udp does the system-call work: `recvmmsg` with UDP GRO on the way
//! in (one read returns many datagrams, several back to back in one buffer),
//! `sendmsg` with UDP GSO (`UDP_SEGMENT`) on the way out (one call sends a
//! [`Batch`] of equal-sized datagrams). Socket buffers are made large so
//! bursts are not dropped by the kernel (`UdpRcvbufErrors`).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, PoisonError};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tasuki_core::batch::Batch;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffers per read.
pub const RECV_BATCH: usize = 16;
/// Size of each receive buffer: a full GRO super-datagram.
const RECV_BUFFER: usize = 65_536;
/// Kernel socket buffer size asked for, each way.
const SOCKET_BUFFER: usize = 8 << 20;
/// Peers whose local address is remembered; past it, the memory starts
/// afresh (and fills again from the next datagrams).
const MAX_REPLY_ADDRS: usize = 1 << 18;

/// A UDP socket for the data plane.
pub struct BatchUdp {
    sock: UdpSocket,
    state: UdpSocketState,
    /// An IPv6 socket: IPv4 destinations are sent to as IPv4-mapped.
    v6: bool,
    /// The local address each peer's last datagram came to (as the socket
    /// names them): what is sent to that peer leaves from it, so a machine
    /// with several addresses answers from the one the peer used (a peer,
    /// or its NAT, drops an answer from another), as WireGuard's sticky
    /// sockets do. Only where [`BatchUdp::answer_from_reached_address`]
    /// asked for it (the hub): a spoke sends from what its kernel picks,
    /// which follows it when it roams.
    reply_from: Option<Mutex<HashMap<SocketAddr, IpAddr>>>,
}

/// Buffers for [`BatchUdp::try_recv`], reused across reads.
pub struct RecvBatch {
    bufs: Box<[[u8; RECV_BUFFER]; RECV_BATCH]>,
    meta: [RecvMeta; RECV_BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        let bufs: Box<[[u8; RECV_BUFFER]; RECV_BATCH]> = vec![[0u8; RECV_BUFFER]; RECV_BATCH]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("exactly RECV_BATCH buffers"));
        Self {
            bufs,
            meta: [RecvMeta::default(); RECV_BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// What the last read returned: the sender, the bytes (several datagrams
    /// back to back) and the size of each datagram in them but the last.
    pub fn received(&self) -> impl Iterator<Item = (SocketAddr, &[u8], usize)> {
        self.meta[..self.count]
            .iter()
            .zip(self.bufs.iter())
            .map(|(m, b)| {
                let from = crate::dual_stack::canonical(m.addr);
                (from, &b[..m.len.min(RECV_BUFFER)], m.stride)
            })
    }
}

impl BatchUdp {
    /// Wraps a bound socket: non-blocking, GRO on, large buffers.
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&sock).into())?;
        grow_buffers(&sock);
        let v6 = sock.local_addr()?.is_ipv6();
        sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(sock)?;
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP socket ready"
        );
        Ok(Self {
            sock,
            state,
            v6,
            reply_from: None,
        })
    }

    /// From now on, what is sent to a peer leaves from the local address
    /// the peer's last datagram came to (the hub: spokes may reach it at
    /// any of its addresses).
    pub fn answer_from_reached_address(mut self) -> Self {
        self.reply_from = Some(Mutex::new(HashMap::new()));
        self
    }

    /// Binds a new socket to `addr`; `[::]:port` takes both families
    /// (see [`crate::dual_stack`]).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::new(crate::dual_stack::udp_socket(addr)?)
    }

    /// Sets the default destination; datagrams from others are discarded.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        let addr = if self.v6 {
            crate::dual_stack::mapped(addr)
        } else {
            addr
        };
        self.sock.connect(addr).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    /// Reads what is waiting into `batch`; `WouldBlock` when nothing is.
    pub fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.count = 0;
        let RecvBatch { bufs, meta, count } = batch;
        let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(&mut b[..]));
        let n = self.sock.try_io(Interest::READABLE, || {
            self.state.recv((&self.sock).into(), &mut slices, meta)
        })?;
        *count = n;
        self.remember_local(&meta[..n]);
        Ok(n)
    }

    /// Remembers where each datagram of a read came to.
    fn remember_local(&self, meta: &[RecvMeta]) {
        let Some(reply_from) = &self.reply_from else {
            return;
        };
        let mut map = reply_from.lock().unwrap_or_else(PoisonError::into_inner);
        for m in meta {
            let Some(local) = m.dst_ip else { continue };
            if map.get(&m.addr) != Some(&local) {
                if map.len() >= MAX_REPLY_ADDRS {
                    map.clear();
                }
                map.insert(m.addr, local);
            }
        }
    }

    /// The local address `destination` last sent to.
    fn local_for(&self, destination: SocketAddr) -> Option<IpAddr> {
        let map = self.reply_from.as_ref()?;
        map.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&destination)
            .copied()
    }

    /// Sends one batch: one system call when the kernel does GSO, one per
    /// datagram otherwise. Waits while the socket buffer is full.
    pub async fn send(&self, batch: &Batch<SocketAddr>) -> io::Result<()> {
        let Some(destination) = batch.destination() else {
            return Ok(());
        };
        let destination = if self.v6 {
            crate::dual_stack::mapped(destination)
        } else {
            destination
        };
        let src_ip = self.local_for(destination);
        if batch.count() > 1 && self.state.max_gso_segments() >= batch.count() {
            return self
                .send_from(Transmit {
                    destination,
                    ecn: None,
                    contents: batch.contents(),
                    segment_size: Some(batch.segment_size()),
                    src_ip,
                })
                .await;
        }
        for datagram in batch.datagrams() {
            self.send_from(Transmit {
                destination,
                ecn: None,
                contents: datagram,
                segment_size: None,
                src_ip,
            })
            .await?;
        }
        Ok(())
    }

    /// Sends from the remembered local address; when that address is gone
    /// (or cannot be a source here), it is forgotten and the kernel picks.
    async fn send_from(&self, mut transmit: Transmit<'_>) -> io::Result<()> {
        match self.send_one(&transmit).await {
            Err(e)
                if transmit.src_ip.is_some()
                    && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EADDRNOTAVAIL)) =>
            {
                tracing::debug!(to = %transmit.destination, from = ?transmit.src_ip, error = %e, "cannot send from the address the peer used; the kernel picks one");
                if let Some(map) = &self.reply_from {
                    map.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&transmit.destination);
                }
                transmit.src_ip = None;
                self.send_one(&transmit).await
            }
            other => other,
        }
    }

    async fn send_one(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.sock
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), transmit)
            })
            .await
    }
}

/// Asks for large kernel buffers: beyond `rmem_max` with CAP_NET_ADMIN
/// (`SO_RCVBUFFORCE`), else as large as the sysctl allows.
fn grow_buffers(sock: &std::net::UdpSocket) {
    let fd = sock.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size = SOCKET_BUFFER as libc::c_int;
        let set = |opt| {
            // SAFETY: fd is a live socket owned by `sock`; the option value
            // is a c_int whose size is passed.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 && set(plain) != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot grow a UDP socket buffer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasuki_core::batch::Outbox;

    /// A batch sent with GSO arrives as the same datagrams, whether the
    /// receiver's GRO hands them over joined or one by one.
    #[tokio::test]
    async fn a_batch_arrives_as_its_datagrams() {
        let rx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = BatchUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = rx.local_addr().unwrap();
        let mut outbox = Outbox::new();
        for i in 0..20u8 {
            assert!(outbox.push(to, &[i; 1200]));
        }
        assert!(outbox.push(to, &[99; 300]));
        for b in outbox.batches() {
            tx.send(b).await.unwrap();
        }
        let mut got = Vec::new();
        let mut batch = RecvBatch::default();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 21 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, rx.readable()).await;
            match rx.try_recv(&mut batch) {
                Ok(_) => {
                    for (from, bytes, stride) in batch.received() {
                        assert_eq!(from, tx.local_addr().unwrap());
                        for d in tasuki_core::batch::split_received(bytes, stride) {
                            got.push(d.to_vec());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 21);
        for (i, d) in got.iter().take(20).enumerate() {
            assert_eq!(d, &vec![i as u8; 1200]);
        }
        assert_eq!(got[20], vec![99; 300]);
    }
}
