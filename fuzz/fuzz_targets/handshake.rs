//! A spoke's first frame at the hub, and a hub's reply at the spoke.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::channel::{Accepting, Initiator};
use tasuki_core::control::{Hello, Purpose};
use tasuki_core::keys::{SecretKey, StaticKey};

fuzz_target!(|data: &[u8]| {
    let hub = StaticKey::from_base64("YFhsQ2M0Z0x1R1FqT0pZb2N6b3c5Y3NyS3FqQ1JBb2M=").unwrap();
    if let Ok(acc) = Accepting::read(&hub, data) {
        let _ = acc.complete(Some(&SecretKey::from_bytes([1; 32])));
    }
    let spoke = StaticKey::from_base64("aGVsbG8gd29ybGQgdGhpcyBpcyAzMiBieXRlcyEhISE=").unwrap();
    let hello = Hello { version: 1, invitation: None };
    if let Ok((init, _)) = Initiator::start(Purpose::Attach, &spoke, &hub.public(), None, &hello) {
        let _ = init.finish(data);
    }
});
