//! The data plane's passes, shared by the hub and the spoke: read a batch
//! from the UDP socket or the TUN, let the daemon's state handle every
//! packet (decrypt, route, relay, encrypt into its outbox and TUN writer),
//! then write everything at once. The daemons differ only in their
//! [`PassHandler`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;
use tasuki_core::batch::{split_received, Outbox};
use tasuki_core::link::EpochTunnel;
use tasuki_core::routing::DropReason;

use crate::netdev::{Tun, TunReader, TunWriter};
use crate::udp::{BatchUdp, RecvBatch};

/// Socket reads per wake-up before the loop looks at commands and timers.
const UDP_ROUNDS_PER_WAKE: usize = 8;
/// TUN reads per wake-up: single small packets come one per call, and their
/// datagrams are sent together.
const TUN_READS_PER_WAKE: usize = 64;
/// Datagrams that make a run of TUN reads send what it has.
const FLUSH_AT: usize = 256;
/// Failed reads in a row after which the loop pauses before the next one
/// (a socket or TUN that keeps failing must not spin a core).
const ERRORS_BEFORE_BACKOFF: u32 = 8;
/// The longest pause between failing reads.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// What a daemon does with the packets of a pass.
pub trait PassHandler {
    /// One datagram from `from`.
    fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8]);
    /// One packet read from the TUN.
    fn on_tun_packet(&mut self, packet: &[u8]);
    /// Where the pass's datagrams wait to be sent.
    fn outbox(&mut self) -> &mut Outbox<SocketAddr>;
    /// Where the pass's TUN packets wait to be written.
    fn to_tun(&mut self) -> &mut TunWriter;
    /// `count` datagrams of `bytes` bytes in all were sent.
    fn sent(&mut self, count: u64, bytes: u64);
    /// `count` packets were lost for `reason` (a send or TUN write failed).
    fn lost(&mut self, reason: DropReason, count: u64);
    /// A read of the socket or the TUN failed.
    fn receive_failed(&mut self);
}

/// The data plane's devices and their read buffers.
pub struct Devices {
    udp: BatchUdp,
    tun: Tun,
    udp_in: RecvBatch,
    tun_in: TunReader,
    /// Failed reads in a row, per device, for the back-off.
    udp_failures: u32,
    tun_failures: u32,
}

impl Devices {
    /// Wraps a socket and a TUN.
    pub fn new(udp: BatchUdp, tun: Tun) -> Self {
        Self {
            udp,
            tun,
            udp_in: RecvBatch::default(),
            tun_in: TunReader::default(),
            udp_failures: 0,
            tun_failures: 0,
        }
    }

    /// The UDP socket.
    pub fn udp(&self) -> &BatchUdp {
        &self.udp
    }

    /// The TUN device.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// Reads what the socket holds, a batch at a time, and handles it.
    pub async fn drain_udp<H: PassHandler>(&mut self, handler: &mut H) {
        for _ in 0..UDP_ROUNDS_PER_WAKE {
            match self.udp.try_recv(&mut self.udp_in) {
                Ok(_) => self.udp_failures = 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors (a peer that went away) surface here.
                    tracing::trace!(error = %e, "UDP receive failed");
                    handler.receive_failed();
                    self.udp_failures += 1;
                    back_off(self.udp_failures).await;
                    break;
                }
            }
            for (from, bytes, stride) in self.udp_in.received() {
                for datagram in split_received(bytes, stride) {
                    handler.on_datagram(from, datagram);
                }
            }
            self.flush(handler).await;
        }
    }

    /// Reads what the TUN holds and handles it.
    pub async fn drain_tun<H: PassHandler>(&mut self, handler: &mut H) {
        for _ in 0..TUN_READS_PER_WAKE {
            match self.tun.try_read(&mut self.tun_in) {
                Ok(_) => self.tun_failures = 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "TUN read failed");
                    handler.receive_failed();
                    self.tun_failures += 1;
                    back_off(self.tun_failures).await;
                    break;
                }
            }
            for packet in self.tun_in.packets() {
                handler.on_tun_packet(packet);
            }
            if handler.outbox().len() >= FLUSH_AT {
                self.flush(handler).await;
            }
        }
        self.flush(handler).await;
    }

    /// Sends the pass's datagrams and writes its TUN packets.
    pub async fn flush<H: PassHandler>(&mut self, handler: &mut H) {
        let (mut count, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        for batch in handler.outbox().batches() {
            match self.udp.send(batch).await {
                Ok(()) => {
                    count += batch.count() as u64;
                    bytes += batch.contents().len() as u64;
                }
                Err(e) => {
                    tracing::debug!(error = %e, to = ?batch.destination(), "UDP send failed");
                    failed += batch.count() as u64;
                }
            }
        }
        handler.outbox().clear();
        if count > 0 {
            handler.sent(count, bytes);
        }
        if failed > 0 {
            handler.lost(DropReason::SendFailed, failed);
        }
        let packets = handler.to_tun().len() as u64;
        if let Err(e) = self.tun.write(handler.to_tun()).await {
            tracing::debug!(error = %e, "TUN write failed");
            handler.lost(DropReason::TunWriteFailed, packets);
        }
    }
}

/// Pauses after the `failures`-th failed read in a row, longer each time
/// from [`ERRORS_BEFORE_BACKOFF`] on (1 ms, 2 ms, … up to [`MAX_BACKOFF`]).
async fn back_off(failures: u32) {
    if failures >= ERRORS_BEFORE_BACKOFF {
        let exp = (failures - ERRORS_BEFORE_BACKOFF).min(8);
        tokio::time::sleep(Duration::from_millis(1 << exp).min(MAX_BACKOFF)).await;
    }
}

/// What opening one datagram of a WireGuard tunnel gave.
#[derive(Debug)]
pub enum Opened {
    /// An IPv4 packet of this many bytes waits at the end of the TUN batch
    /// (see [`TunWriter::commit`]).
    Inner(usize),
    /// Nothing for the TUN: a keepalive, or a handshake message whose
    /// replies (and the packets queued behind it) are in the outbox.
    Nothing,
    /// An IPv6 packet: tasuki carries IPv4 only.
    Ipv6,
    /// The tunnel refused the datagram.
    Rejected(WireGuardError),
}

/// Opens a datagram for `tunnel` from `peer`. A data packet is decrypted
/// straight into the TUN batch (no copy); anything else may answer into the
/// outbox. Once the tunnel has a session (a handshake completed, or the
/// peer's first data packet made the session it answered current), the
/// packets that waited for it are sent. `source` is the address the rate
/// limiter sees.
#[inline]
pub fn open_datagram(
    tunnel: &mut EpochTunnel,
    source: Option<IpAddr>,
    peer: SocketAddr,
    datagram: &[u8],
    out: &mut Outbox<SocketAddr>,
    to_tun: &mut TunWriter,
) -> Opened {
    let is_data = datagram.first() == Some(&4);
    let tunn = &mut tunnel.tunn;
    let result = if is_data {
        tunn.decapsulate(source, datagram, to_tun.slot(datagram.len().max(256)))
    } else {
        tunn.decapsulate(source, datagram, out.spare())
    };
    let opened = match result {
        TunnResult::WriteToNetwork(p) => {
            let len = p.len();
            if is_data {
                out.push(peer, to_tun.pending(len));
            } else {
                out.commit(peer, len);
            }
            Opened::Nothing
        }
        TunnResult::WriteToTunnelV4(p, _) => Opened::Inner(p.len()),
        TunnResult::WriteToTunnelV6(..) => Opened::Ipv6,
        TunnResult::Done => Opened::Nothing,
        TunnResult::Err(e) => return Opened::Rejected(e),
    };
    // Packets held while the session was being set up.
    if tunnel.waiting() > 0 || !is_data {
        while let Some(len) = tunnel.release_waiting(out.spare()) {
            out.commit(peer, len);
        }
    }
    opened
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use tasuki_core::keys::{KeyEpoch, StaticKey};
    use tasuki_core::link::{Link, Sealed};

    /// Two ends of one link under the same epoch.
    fn tunnels() -> (Link, Link) {
        let (ka, kb) = (
            StaticKey::generate(&mut OsRng),
            StaticKey::generate(&mut OsRng),
        );
        let epoch = KeyEpoch::issue(1, 0, &mut OsRng);
        let (mut a, mut b) = (Link::new(1, kb.public(), 0), Link::new(2, ka.public(), 0));
        a.install(&ka, &epoch, None);
        b.install(&kb, &epoch, None);
        (a, b)
    }

    fn datagrams(out: &Outbox<SocketAddr>, to: SocketAddr) -> Vec<Vec<u8>> {
        assert!(out.batches().all(|b| b.destination() == Some(to)));
        out.batches()
            .flat_map(|b| b.datagrams())
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// A handshake and a data packet through `open_datagram` on both sides:
    /// replies go to the outbox for the peer, the packet queued behind the
    /// handshake follows it, data lands in the TUN batch, junk is refused.
    #[test]
    fn opens_handshakes_into_the_outbox_and_data_into_the_tun_batch() {
        let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        );
        let (mut link_a, mut link_b) = tunnels();
        let a = link_a.newest().unwrap();
        let b = link_b.newest().unwrap();
        let packet = {
            let mut p = Vec::new();
            etherparse::PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
                .udp(1, 2)
                .write(&mut p, b"hello")
                .unwrap();
            p
        };
        // a wants to send: the packet is queued and an initiation goes out.
        let (mut out_a, mut out_b) = (Outbox::new(), Outbox::new());
        let got = a.seal(&packet, &mut out_a, b_addr);
        assert!(matches!(got, Ok(Sealed::Waiting(Some(_)))), "{got:?}");
        assert_eq!(a.waiting(), 1, "the packet waits for the handshake");
        let init = datagrams(&out_a, b_addr).remove(0);
        out_a.clear();
        let (mut tun_a, mut tun_b) = (TunWriter::default(), TunWriter::default());
        // b answers the initiation into its outbox, to a.
        let got = open_datagram(b, None, a_addr, &init, &mut out_b, &mut tun_b);
        assert!(matches!(got, Opened::Nothing), "{got:?}");
        assert!(tun_b.is_empty());
        let response = datagrams(&out_b, a_addr);
        assert_eq!(response.len(), 1, "one handshake response");
        out_b.clear();
        // a opens the response and sends the queued packet behind it (after
        // a keepalive that confirms the session).
        let got = open_datagram(a, None, b_addr, &response[0], &mut out_a, &mut tun_a);
        assert!(matches!(got, Opened::Nothing), "{got:?}");
        let sent = datagrams(&out_a, b_addr);
        assert_eq!(a.waiting(), 0, "the packet that waited went out");
        assert!(!sent.is_empty() && sent.iter().all(|d| d.first() == Some(&4)));
        // b opens the data straight into its TUN batch.
        let mut delivered = Vec::new();
        for d in &sent {
            match open_datagram(b, None, a_addr, d, &mut out_b, &mut tun_b) {
                Opened::Inner(len) => delivered.push(tun_b.pending(len).to_vec()),
                Opened::Nothing => {}
                other => panic!("expected data, got {other:?}"),
            }
        }
        assert_eq!(delivered, vec![packet.clone()]);
        assert!(out_b.is_empty());
        let data = sent.last().cloned().unwrap_or_default();
        // The same datagram again is a replay; junk is refused too.
        let got = open_datagram(b, None, a_addr, &data, &mut out_b, &mut tun_b);
        assert!(matches!(got, Opened::Rejected(_)), "{got:?}");
        let got = open_datagram(b, None, a_addr, &[4, 0, 0], &mut out_b, &mut tun_b);
        assert!(matches!(got, Opened::Rejected(_)), "{got:?}");
    }
}
