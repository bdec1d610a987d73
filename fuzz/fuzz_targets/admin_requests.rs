//! Requests on the local admin and control sockets, and user input there.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::admin_api::{Envelope, HubRequest, SpokeRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<Envelope<HubRequest>>(text);
        let _ = serde_json::from_str::<Envelope<SpokeRequest>>(text);
        let _ = tasuki_core::registry::validate_name(text);
        let _ = tasuki_core::users::validate_id(text);
        let _ = tasuki_core::users::verify_password(text, "x");
    }
});
