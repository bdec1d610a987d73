//! The data plane's passes, shared by the hub and the spoke: read a batch
//! from the UDP socket or the TUN, let the daemon's state handle every
//! packet (decrypt, route, relay, encrypt into its outbox and TUN writer),
//! then write everything at once. The daemons differ only in their
//! machine ([`DataPlane`]).

use std::io;
use std::time::Duration;

use tasuki_core::batch::split_received;
pub use tasuki_core::datagram::{open_datagram, DataPlane, Opened, TunSink};
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

/// Which device woke the data plane, from [`Devices::ready`].
#[derive(Debug)]
pub enum Ready {
    /// The UDP socket (or why waiting on it failed).
    Udp(io::Result<()>),
    /// The TUN (or why waiting on it failed).
    Tun(io::Result<()>),
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

    /// Waits until the socket or the TUN has something to read (for a
    /// daemon's `select!` beside its commands and timers).
    pub async fn ready(&self) -> Ready {
        tokio::select! {
            r = self.udp.readable() => Ready::Udp(r),
            r = self.tun.readable() => Ready::Tun(r),
        }
    }

    /// The pass [`Devices::ready`] asked for: drains the device that has
    /// something. A device whose readiness failed is logged (a failing TUN
    /// pauses the loop briefly, so it cannot spin a core).
    pub async fn pass<H: DataPlane<Sink = TunWriter>>(&mut self, ready: Ready, handler: &mut H) {
        match ready {
            Ready::Udp(Ok(())) => self.drain_udp(handler).await,
            Ready::Tun(Ok(())) => self.drain_tun(handler).await,
            Ready::Udp(Err(e)) => tracing::warn!(error = %e, "UDP socket failed"),
            Ready::Tun(Err(e)) => {
                tracing::error!(error = %e, "TUN read failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Reads what the socket holds, a batch at a time, and handles it.
    pub async fn drain_udp<H: DataPlane<Sink = TunWriter>>(&mut self, handler: &mut H) {
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
                    handler.handle_datagram(from, datagram);
                }
            }
            self.flush(handler).await;
        }
    }

    /// Reads what the TUN holds and handles it.
    pub async fn drain_tun<H: DataPlane<Sink = TunWriter>>(&mut self, handler: &mut H) {
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
                handler.handle_tun(packet);
            }
            if handler.outbox().len() >= FLUSH_AT {
                self.flush(handler).await;
            }
        }
        self.flush(handler).await;
    }

    /// Sends the pass's datagrams and writes its TUN packets.
    pub async fn flush<H: DataPlane<Sink = TunWriter>>(&mut self, handler: &mut H) {
        let (mut count, mut failed) = (0u64, 0u64);
        for batch in handler.outbox().batches() {
            match self.udp.send(batch).await {
                Ok(()) => count += batch.count() as u64,
                Err(e) => {
                    tracing::debug!(error = %e, to = ?batch.destination(), "UDP send failed");
                    failed += batch.count() as u64;
                }
            }
        }
        handler.outbox().clear();
        if count > 0 {
            handler.sent(count);
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
