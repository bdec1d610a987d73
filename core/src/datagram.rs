//! One WireGuard datagram opened for a tunnel, and where inner packets go:
//! the [`TunSink`] a data plane decrypts into (the shell's TUN writer, or a
//! plain [`PacketBatch`] in tests and the simulator).

use std::net::{IpAddr, SocketAddr};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;

use crate::admin_api::Counters;
use crate::batch::Outbox;
use crate::link::EpochTunnel;
use crate::routing::DropReason;

/// What a data-plane machine leaves for its driver after a pass, the same
/// for hub and spoke: datagrams to send, packets for the TUN, events for
/// the control side.
#[derive(Debug)]
pub struct PassIo<T, E> {
    /// Datagrams to send at the end of the pass.
    pub out: Outbox<SocketAddr>,
    /// Packets to write to the TUN at the end of the pass.
    pub to_tun: T,
    /// Events for the control side, oldest first.
    pub events: std::collections::VecDeque<E>,
}

impl<T: Default, E> Default for PassIo<T, E> {
    fn default() -> Self {
        Self {
            out: Outbox::new(),
            to_tun: T::default(),
            events: std::collections::VecDeque::new(),
        }
    }
}

/// A data-plane machine as its driver sees it (the hub's and the spoke's):
/// packets in, datagrams and TUN packets and events out, and what became
/// of the driver's own reads and writes.
pub trait DataPlane {
    /// Where opened packets wait for the TUN.
    type Sink: TunSink;
    /// What the machine tells the control side.
    type Event;
    /// One datagram from `from`.
    fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8]);
    /// One packet read from the TUN.
    fn handle_tun(&mut self, packet: &[u8]);
    /// The pass's outputs.
    fn io(&mut self) -> &mut PassIo<Self::Sink, Self::Event>;
    /// The counters status shows.
    fn counters(&mut self) -> &mut Counters;
    /// `count` packets were lost for `reason` (a send or TUN write failed).
    fn lost(&mut self, reason: DropReason, count: u64);

    /// The datagrams waiting to be sent.
    fn outbox(&mut self) -> &mut Outbox<SocketAddr> {
        &mut self.io().out
    }
    /// The packets waiting for the TUN.
    fn to_tun(&mut self) -> &mut Self::Sink {
        &mut self.io().to_tun
    }
    /// The next event for the control side.
    fn poll_event(&mut self) -> Option<Self::Event> {
        self.io().events.pop_front()
    }
    /// `count` datagrams were sent.
    fn sent(&mut self, count: u64) {
        self.counters().tx_datagrams += count;
    }
    /// A read of the socket or the TUN failed.
    fn receive_failed(&mut self) {
        self.counters().receive_errors += 1;
    }
}

/// Where a data plane puts the inner packets it opened, to be written to
/// its TUN at the end of a pass.
pub trait TunSink {
    /// Room for the next packet, at least `len` bytes; the packet counts
    /// only once [`commit`](Self::commit)ted, so a caller may use it as
    /// scratch.
    fn slot(&mut self, len: usize) -> &mut [u8];
    /// The first `len` bytes written to the current [`slot`](Self::slot).
    fn pending(&self, len: usize) -> &[u8];
    /// Queues the first `len` bytes of the current slot as a packet.
    fn commit(&mut self, len: usize);
}

/// A [`TunSink`] that keeps the packets as they are: for tests and the
/// simulator (the daemons coalesce theirs for the TUN).
#[derive(Debug, Default)]
pub struct PacketBatch {
    /// The packets committed, in order.
    pub packets: Vec<Vec<u8>>,
    slot: Vec<u8>,
}

impl TunSink for PacketBatch {
    fn slot(&mut self, len: usize) -> &mut [u8] {
        self.slot.clear();
        self.slot.resize(len, 0);
        &mut self.slot
    }

    fn pending(&self, len: usize) -> &[u8] {
        self.slot.get(..len).unwrap_or(&[])
    }

    fn commit(&mut self, len: usize) {
        let mut packet = std::mem::take(&mut self.slot);
        packet.truncate(len);
        self.packets.push(packet);
    }
}

/// What opening one datagram of a WireGuard tunnel gave.
#[derive(Debug)]
pub enum Opened {
    /// An IPv4 or IPv6 packet of this many bytes waits at the end of the
    /// TUN batch (see [`TunSink::commit`]); cryptokey routing is the
    /// caller's.
    Inner(usize),
    /// Nothing for the TUN: a keepalive, or a handshake message whose
    /// replies (and the packets queued behind it) are in the outbox.
    Nothing,
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
    to_tun: &mut impl TunSink,
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
        TunnResult::WriteToTunnelV6(p, _) => Opened::Inner(p.len()),
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
    use crate::keys::{KeyEpoch, StaticKey};
    use crate::link::{Link, Sealed};
    use rand_core::OsRng;

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
        let (mut tun_a, mut tun_b) = (PacketBatch::default(), PacketBatch::default());
        // b answers the initiation into its outbox, to a.
        let got = open_datagram(b, None, a_addr, &init, &mut out_b, &mut tun_b);
        assert!(matches!(got, Opened::Nothing), "{got:?}");
        assert!(tun_b.packets.is_empty());
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
                Opened::Inner(len) => {
                    delivered.push(tun_b.pending(len).to_vec());
                    tun_b.commit(len);
                }
                Opened::Nothing => {}
                other => panic!("expected data, got {other:?}"),
            }
        }
        assert_eq!(delivered, vec![packet.clone()]);
        assert_eq!(tun_b.packets, delivered);
        assert!(out_b.is_empty());
        let data = sent.last().cloned().unwrap_or_default();
        // The same datagram again is a replay; junk is refused too.
        let got = open_datagram(b, None, a_addr, &data, &mut out_b, &mut tun_b);
        assert!(matches!(got, Opened::Rejected(_)), "{got:?}");
        let got = open_datagram(b, None, a_addr, &[4, 0, 0], &mut out_b, &mut tun_b);
        assert!(matches!(got, Opened::Rejected(_)), "{got:?}");
    }
}
