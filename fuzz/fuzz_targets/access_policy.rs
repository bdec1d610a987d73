//! The access policy: rule text from an admin, and decrypted inner packets
//! at the hub's policy check (flow parsing, ICMP errors, flow tracking).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tasuki_core::access::{
    AccessGate, AccessPolicy, Flow, Member, Mode, Origin, Rule, Selector, Service, SpokeFacts,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<Selector>();
        let _ = text.parse::<Service>();
        let _ = text.parse::<Member>();
        let _ = text.parse::<Mode>();
    }
    let _ = Flow::parse(data);
    let mut policy = AccessPolicy {
        mode: Mode::Enforce,
        ..Default::default()
    };
    let rule = |from: &str, to: &str, service: &str| Rule {
        from: from.parse().unwrap(),
        to: to.parse().unwrap(),
        services: vec![service.parse().unwrap()],
    };
    policy.allow(rule("spoke:a", "*", "tcp/1-1024")).unwrap();
    policy.allow(rule("192.168.50.0/24", "spoke:b", "udp")).unwrap();
    policy.allow(rule("fd50::/64", "spoke:a", "icmp")).unwrap();
    policy.allow(rule("spoke:b", "fd50::/64", "tcp/22")).unwrap();
    policy.allow(rule("hub:b", "spoke:a", "any")).unwrap();
    policy.allow(rule("spoke:a", "hub:b", "udp/53")).unwrap();
    let facts = [
        SpokeFacts {
            id: 1,
            name: "a".into(),
            addr: "10.77.0.2".parse().unwrap(),
            addr6: Some("fd77:1::2".parse().unwrap()),
            users: vec!["alice".into()],
            branch: vec![],
        },
        SpokeFacts {
            id: 2,
            name: "b".into(),
            addr: "10.77.0.3".parse().unwrap(),
            addr6: Some("fd77:1::3".parse().unwrap()),
            users: vec![],
            // b is a child hub: its branch as a sender and a receiver.
            branch: vec!["10.81.0.0/24".parse().unwrap()],
        },
    ];
    let mut gate = AccessGate::default();
    let compiled = policy.compile_dual(
        "10.77.0.1".parse().unwrap(),
        Some("fd77:1::1".parse().unwrap()),
        &facts,
    );
    gate.replace(Arc::new(compiled));
    let _ = gate.check(Origin::Spoke(1), data, 0);
    let _ = gate.check(Origin::Spoke(2), data, 1);
    let _ = gate.check(Origin::Local, data, 2);
});
