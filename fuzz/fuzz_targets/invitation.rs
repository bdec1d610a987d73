//! Invitation text as a user pastes it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::invitation::Invitation;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(inv) = Invitation::decode(text) {
            // Whatever decodes must encode back to something that decodes the same.
            assert_eq!(Invitation::decode(&inv.encode()).ok(), Some(inv));
        }
        let _ = Invitation::decode(&format!("tasuki1-{text}"));
    }
});
