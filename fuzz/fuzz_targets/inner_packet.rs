//! Decrypted inner packets at the hub's routing step.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::routing::{inner_header, RouteTable};

fuzz_target!(|data: &[u8]| {
    let mut t = RouteTable::new(
        "10.77.0.0/24".parse().unwrap(),
        "10.77.0.1".parse().unwrap(),
        vec!["192.168.50.0/24".parse().unwrap()],
    );
    t.set_spoke(1, "10.77.0.2".parse().unwrap());
    t.set_spoke(2, "10.77.0.3".parse().unwrap());
    let _ = inner_header(data);
    let _ = t.inbound(1, data);
    let _ = t.inbound(9, data);
    let _ = t.outbound(data);
});
