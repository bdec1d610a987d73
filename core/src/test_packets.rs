//! Inner packets and configurations for tests.

use std::net::Ipv4Addr;

/// A spoke's configuration on link `id` (10.77.0.2/24 behind hub 10.77.0.1).
pub(crate) fn spoke_config(id: u32) -> crate::control::SpokeConfig {
    crate::control::SpokeConfig {
        spoke_id: id,
        name: "a".into(),
        tunnel_addr: "10.77.0.2/24".parse().unwrap(),
        hub_tunnel_addr: "10.77.0.1".parse().unwrap(),
        routes: vec![],
        mtu: 1420,
        keepalive_secs: 25,
        ipv6: None,
        hub_endpoints: Vec::new(),
    }
}

/// A UDP packet from `from` to `to` carrying `payload`.
pub(crate) fn udp(from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv4(from.octets(), to.octets(), 64)
        .udp(4000, 5000)
        .write(&mut p, payload)
        .unwrap();
    p
}

/// A UDP packet from `from:sport` to `to:dport` carrying `payload`.
pub(crate) fn udp_ports(
    from: Ipv4Addr,
    sport: u16,
    to: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv4(from.octets(), to.octets(), 64)
        .udp(sport, dport)
        .write(&mut p, payload)
        .unwrap();
    p
}

/// An IPv6 UDP packet from `from` to `to` carrying `payload`.
pub(crate) fn udp6(from: &str, to: &str, payload: &[u8]) -> Vec<u8> {
    let (from, to): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        (from.parse().unwrap(), to.parse().unwrap());
    let mut p = Vec::new();
    etherparse::PacketBuilder::ipv6(from.octets(), to.octets(), 64)
        .udp(4000, 5000)
        .write(&mut p, payload)
        .unwrap();
    p
}
