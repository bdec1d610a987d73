//! Decrypted inner packets (IPv4 and IPv6) at the hub's routing step.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::routing::{inner_header, Ipv6Plan, RouteTable};

fuzz_target!(|data: &[u8]| {
    let mut t = RouteTable::new(
        "10.77.0.0/24".parse().unwrap(),
        "10.77.0.1".parse().unwrap(),
        vec!["192.168.50.0/24".parse().unwrap()],
    )
    .with_ipv6(Some(Ipv6Plan {
        tunnel_net: "fd77:1::/64".parse().unwrap(),
        hub_addr: "fd77:1::1".parse().unwrap(),
        routes: vec!["fd50::/64".parse().unwrap()],
    }));
    t.set_spoke(1, "10.77.0.2".parse().unwrap());
    t.set_spoke(2, "10.77.0.3".parse().unwrap());
    t.set_spoke6(1, Some("fd77:1::2".parse().unwrap()));
    t.set_spoke6(2, Some("fd77:1::3".parse().unwrap()));
    let _ = inner_header(data);
    let _ = t.inbound(1, data);
    let _ = t.inbound(9, data);
    let _ = t.outbound(data);
});
