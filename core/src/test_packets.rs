//! Inner packets for tests.

use std::net::Ipv4Addr;

/// A UDP packet from `from` to `to` carrying `payload`.
pub(crate) fn udp(from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv4(from.octets(), to.octets(), 64)
        .udp(4000, 5000)
        .write(&mut p, payload)
        .unwrap();
    p
}
