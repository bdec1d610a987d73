//! Sealed keys as they arrive (tampered boxes, wrong numbers).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::keys::{CipherSuite, KeyEpoch, SecretKey};

fuzz_target!(|data: &[u8]| {
    let prev = KeyEpoch {
        number: 4,
        key: SecretKey::from_bytes([7; 32]),
        suite: CipherSuite::WireGuardPsk,
        issued_at: 0,
    };
    let number = data.first().copied().unwrap_or(5) as u64;
    let _ = tasuki_core::seal::open(3, &prev, number, data);
    if let Ok(d) = tasuki_core::codec::from_bytes::<tasuki_core::control::KeyDelivery>("d", data) {
        let _ = tasuki_core::rotation::open_delivery(3, &d, std::slice::from_ref(&prev));
    }
});
