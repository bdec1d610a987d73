//! TUN interfaces and routes (rtnetlink). A TUN device goes away with its
//! file descriptor, and the kernel removes its address and routes with it.
//!
//! The TUN is opened with `IFF_VNET_HDR` and TCP segmentation offload
//! (`TUNSETOFFLOAD`) when the kernel allows: the kernel then hands over TCP
//! super-packets of up to 64 KB, which tun-rs splits into MTU-sized packets
//! ([`TunReader`]), and takes back coalesced ones, which tun-rs builds from
//! consecutive segments of a flow ([`TunWriter`]). One system call moves
//! dozens of packets each way.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, VIRTIO_NET_HDR_LEN};

/// Packets one TUN read can yield (a 64 KB super-packet of small segments).
const READ_BATCH: usize = 128;
/// Room for one packet of a split super-packet (any MTU up to 9000).
const READ_SLOT: usize = 9_216;
/// Largest raw read: the offload header and a 64 KB super-packet.
const READ_RAW: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// Headroom the writer keeps before every packet for the offload header.
const WRITE_HEADROOM: usize = VIRTIO_NET_HDR_LEN;

/// An up TUN interface with an address.
pub struct TunDevice {
    /// The device.
    pub device: Tun,
    /// Its name.
    pub name: String,
    /// Its IPv6 address, when one was asked for and the machine takes it
    /// (a machine with IPv6 turned off carries IPv4 only).
    pub addr6: Option<Ipv6Net>,
}

/// A TUN device read and written in batches.
pub struct Tun {
    dev: AsyncDevice,
    offload: bool,
}

/// Creates (or takes over) TUN interface `name` with address `addr` (and
/// `addr6`, where IPv6 is carried), MTU `mtu`, and brings it up.
pub fn create_tun(
    name: &str,
    addr: Ipv4Net,
    addr6: Option<Ipv6Net>,
    mtu: u16,
) -> Result<TunDevice> {
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .ipv4(addr.addr(), addr.prefix_len(), None)
            .mtu(mtu)
            .offload(offload)
            .enable(true)
            .build_async()
    };
    let (dev, offload) = match build(true) {
        Ok(dev) => (dev, true),
        Err(e) => {
            tracing::warn!(error = %e, "TUN offload unavailable; reading one packet per system call");
            let dev = build(false).with_context(|| {
                format!(
                "cannot create TUN interface {name:?} (needs root or CAP_NET_ADMIN and /dev/net/tun)"
            )
            })?;
            (dev, false)
        }
    };
    let name = dev.name().unwrap_or_else(|_| name.to_owned());
    let addr6 = addr6.filter(|a6| match dev.add_address_v6(a6.addr(), a6.prefix_len()) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(interface = %name, addr = %a6, error = %e, "cannot give the TUN its IPv6 address (is IPv6 turned off here?): carrying IPv4 only");
            false
        }
    });
    tracing::info!(interface = %name, offload, udp_offload = dev.udp_gso(), "TUN ready");
    Ok(TunDevice {
        device: Tun { dev, offload },
        name,
        addr6,
    })
}

impl Tun {
    /// Whether the kernel hands over TCP super-packets.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        self.dev.readable().await
    }

    /// Reads what one system call gives (a packet, or a super-packet split
    /// into packets) into `reader`; `WouldBlock` when nothing waits.
    pub fn try_read(&self, reader: &mut TunReader) -> io::Result<usize> {
        reader.count = 0;
        let n =
            self.dev
                .try_recv_multiple(&mut reader.raw, &mut reader.slots, &mut reader.sizes, 0)?;
        reader.count = n;
        Ok(n)
    }

    /// Writes every packet of `writer` (coalescing consecutive TCP segments
    /// of a flow when offload is on) and empties it.
    pub async fn write(&self, writer: &mut TunWriter) -> io::Result<()> {
        if writer.count == 0 {
            return Ok(());
        }
        let result = self
            .dev
            .send_multiple(
                &mut writer.gro,
                &mut writer.slots[..writer.count],
                WRITE_HEADROOM,
            )
            .await;
        writer.count = 0;
        result.map(|_| ())
    }
}

/// Buffers for [`Tun::try_read`], reused across reads.
pub struct TunReader {
    raw: Vec<u8>,
    slots: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
}

impl Default for TunReader {
    fn default() -> Self {
        Self {
            raw: vec![0; READ_RAW],
            slots: vec![vec![0; READ_SLOT]; READ_BATCH],
            sizes: vec![0; READ_BATCH],
            count: 0,
        }
    }
}

impl TunReader {
    /// The packets of the last read.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.slots[..self.count]
            .iter()
            .zip(&self.sizes)
            .map(|(slot, n)| &slot[..*n])
    }
}

/// Packets waiting to be written to the TUN, each with headroom for the
/// offload header; reused across writes.
#[derive(Default)]
pub struct TunWriter {
    slots: Vec<Vec<u8>>,
    count: usize,
    gro: GROTable,
}

impl tasuki_core::datagram::TunSink for TunWriter {
    /// Room for the next packet, at least `len` bytes; the packet counts only
    /// once [`TunSink::commit`]ted, so a caller may use it as scratch.
    fn slot(&mut self, len: usize) -> &mut [u8] {
        if self.count == self.slots.len() {
            // Room to grow into a coalesced super-packet without moving.
            self.slots
                .push(Vec::with_capacity(2 * WRITE_HEADROOM + 65_535));
        }
        let slot = &mut self.slots[self.count];
        slot.clear();
        slot.resize(WRITE_HEADROOM + len, 0);
        &mut slot[WRITE_HEADROOM..]
    }

    /// The first `len` bytes written to the current [`TunSink::slot`].
    fn pending(&self, len: usize) -> &[u8] {
        self.slots
            .get(self.count)
            .and_then(|s| s.get(WRITE_HEADROOM..WRITE_HEADROOM + len))
            .unwrap_or(&[])
    }

    /// Queues the first `len` bytes of the current slot as a packet.
    fn commit(&mut self, len: usize) {
        if let Some(slot) = self.slots.get_mut(self.count) {
            slot.truncate(WRITE_HEADROOM + len);
            self.count += 1;
        }
    }
}

impl TunWriter {
    /// Packets queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Adds routes to `nets` through interface `ifname` (existing routes are kept).
pub async fn add_routes(ifname: &str, nets: &[Ipv4Net]) -> Result<()> {
    add_routes_with(ifname, &v4_nets(nets), None).await
}

/// Adds routes to `nets` through `ifname` whose packets the kernel keeps
/// within `mtu` bytes (it fragments larger datagrams to fit).
pub async fn add_routes_mtu(ifname: &str, nets: &[Ipv4Net], mtu: u32) -> Result<()> {
    add_routes_with(ifname, &v4_nets(nets), Some(mtu)).await
}

/// `nets` as routes of either family.
fn v4_nets(nets: &[Ipv4Net]) -> Vec<ipnet::IpNet> {
    nets.iter().copied().map(Into::into).collect()
}

/// `nets` as routes of either family.
fn v6_nets(nets: &[Ipv6Net]) -> Vec<ipnet::IpNet> {
    nets.iter().copied().map(Into::into).collect()
}

async fn add_routes_with(ifname: &str, nets: &[ipnet::IpNet], mtu: Option<u32>) -> Result<()> {
    if nets.is_empty() {
        return Ok(());
    }
    let (index, handle, task) = route_connection(ifname)?;
    for net in nets {
        let mut msg = route_to(net, index);
        if let Some(mtu) = mtu {
            use rtnetlink::packet_route::route::{RouteAttribute, RouteMetric};
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        match handle.route().add(msg).execute().await {
            Ok(()) => tracing::info!(route = %net, dev = ifname, "route added"),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                tracing::info!(route = %net, "route already present")
            }
            Err(e) => {
                task.abort();
                return Err(e).with_context(|| format!("cannot add route {net} dev {ifname}"));
            }
        }
    }
    task.abort();
    Ok(())
}

/// The interface's index and a netlink connection (its task is aborted
/// by the caller when done).
fn route_connection(ifname: &str) -> Result<(u32, rtnetlink::Handle, tokio::task::JoinHandle<()>)> {
    let index = nix::net::if_::if_nametoindex(ifname)
        .with_context(|| format!("interface {ifname} not found"))?;
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open netlink")?;
    Ok((index, handle, tokio::spawn(conn)))
}

/// A route to `net` out of the interface with `index`.
fn route_to(net: &ipnet::IpNet, index: u32) -> rtnetlink::packet_route::route::RouteMessage {
    match net {
        ipnet::IpNet::V4(net) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .output_interface(index)
            .build(),
        ipnet::IpNet::V6(net) => rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .output_interface(index)
            .build(),
    }
}

/// Gives interface `ifname` IPv6 address `addr` (one it has already is
/// no error).
pub async fn add_address6(ifname: &str, addr: Ipv6Net) -> Result<()> {
    let (index, handle, task) = route_connection(ifname)?;
    let added = handle
        .address()
        .add(index, addr.addr().into(), addr.prefix_len())
        .execute()
        .await;
    task.abort();
    match added {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot add address {addr} to {ifname}")),
    }
}

/// Adds IPv6 routes to `nets` through interface `ifname` (existing
/// routes are kept).
pub async fn add_routes6(ifname: &str, nets: &[Ipv6Net]) -> Result<()> {
    add_routes_with(ifname, &v6_nets(nets), None).await
}

/// Routes kept on one interface: what the kernel took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptRoutes {
    /// IPv4 routes.
    pub v4: Vec<Ipv4Net>,
    /// IPv6 routes.
    pub v6: Vec<Ipv6Net>,
}

impl KeptRoutes {
    /// Makes the changes on interface `ifname` one route at a time, so
    /// that one the kernel refuses (logged with its reason) leaves the
    /// others made: a route it could not add is not kept (the next change
    /// adds it again), one it could not remove still is. Removals first.
    /// Returns a sentence for each route that failed.
    pub async fn change(
        &mut self,
        ifname: &str,
        add: &KeptRoutes,
        remove: &KeptRoutes,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        let mut ok = |result: Result<()>| match result {
            Ok(()) => true,
            Err(e) => {
                let e = format!("{e:#}");
                tracing::warn!(interface = %ifname, error = %e, "a route change failed");
                failed.push(e);
                false
            }
        };
        for &net in &remove.v4 {
            if ok(remove_routes(ifname, &[net]).await) {
                self.v4.retain(|n| *n != net);
            }
        }
        for &net in &remove.v6 {
            if ok(remove_routes6(ifname, &[net]).await) {
                self.v6.retain(|n| *n != net);
            }
        }
        for &net in &add.v4 {
            if ok(add_routes(ifname, &[net]).await) {
                self.v4.push(net);
            }
        }
        for &net in &add.v6 {
            if ok(add_routes6(ifname, &[net]).await) {
                self.v6.push(net);
            }
        }
        failed
    }
}

/// Removes the routes to `nets` through interface `ifname` (one already
/// gone is no error).
pub async fn remove_routes(ifname: &str, nets: &[Ipv4Net]) -> Result<()> {
    remove_routes_with(ifname, &v4_nets(nets)).await
}

/// Removes the IPv6 routes to `nets` through interface `ifname` (one
/// already gone is no error).
pub async fn remove_routes6(ifname: &str, nets: &[Ipv6Net]) -> Result<()> {
    remove_routes_with(ifname, &v6_nets(nets)).await
}

async fn remove_routes_with(ifname: &str, nets: &[ipnet::IpNet]) -> Result<()> {
    if nets.is_empty() {
        return Ok(());
    }
    let (index, handle, task) = route_connection(ifname)?;
    for net in nets {
        let msg = route_to(net, index);
        match handle.route().del(msg).execute().await {
            Ok(()) => tracing::info!(route = %net, dev = ifname, "route removed"),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
            Err(e) => {
                task.abort();
                return Err(e).with_context(|| format!("cannot remove route {net} dev {ifname}"));
            }
        }
    }
    task.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The offload framing tasuki relies on, checked without a device: a TCP
    //! super-packet as the kernel hands it over splits into valid segments,
    //! and segments written back coalesce into one super-packet again.
    use super::*;
    use etherparse::{Ipv4HeaderSlice, PacketBuilder, TcpHeaderSlice};
    use tasuki_core::datagram::TunSink;

    const MSS: usize = 1_000;

    fn segment(seq: u32, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 77, 0, 2], [10, 77, 0, 1], 64)
            .tcp(40_000, 5_201, seq, 64_000)
            .ack(7);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn consecutive_segments_coalesce_and_split_back() {
        let data: Vec<u8> = (0..(MSS * 5)).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = TunWriter::default();
        for (i, chunk) in data.chunks(MSS).enumerate() {
            let pkt = segment(1 + (i * MSS) as u32, chunk);
            writer.slot(pkt.len()).copy_from_slice(&pkt);
            writer.commit(pkt.len());
        }
        assert_eq!(writer.len(), 5);
        GROTable::default()
            .apply_gro(&mut writer.slots[..writer.count], WRITE_HEADROOM, false)
            .unwrap();
        let sp = &writer.slots[0];
        let hdr = tun_rs::VirtioNetHdr::decode(&sp[..VIRTIO_NET_HDR_LEN]).unwrap();
        assert_eq!(hdr.gso_type, tun_rs::VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(hdr.gso_size as usize, MSS);
        // The coalesced super-packet sits where the first segment was.
        let ip = Ipv4HeaderSlice::from_slice(&sp[VIRTIO_NET_HDR_LEN..]).unwrap();
        assert_eq!(ip.total_len() as usize, 20 + 20 + data.len());
        assert_eq!(&sp[VIRTIO_NET_HDR_LEN + 40..], &data[..]);

        // Split it back as a read would.
        let mut raw = sp[VIRTIO_NET_HDR_LEN..].to_vec();
        let mut bufs = vec![vec![0u8; READ_SLOT]; 8];
        let mut sizes = vec![0; 8];
        let n = tun_rs::gso_split(&mut raw, hdr, &mut bufs, &mut sizes, 0, false).unwrap();
        assert_eq!(n, 5);
        for (i, (buf, size)) in bufs.iter().zip(&sizes).take(n).enumerate() {
            let pkt = &buf[..*size];
            let ip = Ipv4HeaderSlice::from_slice(pkt).unwrap();
            assert_eq!(ip.total_len() as usize, pkt.len());
            let tcp = TcpHeaderSlice::from_slice(&pkt[20..]).unwrap();
            assert_eq!(tcp.sequence_number(), 1 + (i * MSS) as u32);
            assert_eq!(&pkt[40..], &data[i * MSS..(i + 1) * MSS]);
            let expect = segment(tcp.sequence_number(), &pkt[40..]);
            assert_eq!(
                &pkt[20..40][16..18],
                &expect[20..40][16..18],
                "TCP checksum of segment {i} is complete"
            );
        }
    }

    #[test]
    fn a_gap_in_sequence_is_not_coalesced() {
        let mut writer = TunWriter::default();
        for seq in [1u32, 1 + MSS as u32, 1 + 3 * MSS as u32] {
            let pkt = segment(seq, &[9; MSS]);
            writer.slot(pkt.len()).copy_from_slice(&pkt);
            writer.commit(pkt.len());
        }
        GROTable::default()
            .apply_gro(&mut writer.slots[..writer.count], WRITE_HEADROOM, false)
            .unwrap();
        let first = &writer.slots[0];
        let hdr = tun_rs::VirtioNetHdr::decode(&first[..VIRTIO_NET_HDR_LEN]).unwrap();
        assert_eq!(hdr.gso_type, tun_rs::VIRTIO_NET_HDR_GSO_TCPV4);
        let ip = Ipv4HeaderSlice::from_slice(&first[VIRTIO_NET_HDR_LEN..]).unwrap();
        assert_eq!(
            ip.total_len() as usize,
            40 + 2 * MSS,
            "only the first two joined"
        );
        let third = Ipv4HeaderSlice::from_slice(&writer.slots[2][VIRTIO_NET_HDR_LEN..]).unwrap();
        assert_eq!(third.total_len() as usize, 40 + MSS);
    }

    #[test]
    fn writer_slots_are_scratch_until_committed() {
        let mut w = TunWriter::default();
        w.slot(4).copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(w.pending(4), &[1, 2, 3, 4]);
        assert!(w.is_empty());
        w.slot(2).copy_from_slice(&[5, 6]);
        w.commit(2);
        assert_eq!(w.len(), 1);
        assert_eq!(&w.slots[0][WRITE_HEADROOM..], &[5, 6]);
        assert_eq!(w.pending(2), &[] as &[u8]);
    }
}
