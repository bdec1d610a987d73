//! Bytes from a control connection: framing, then every control message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::codec::{from_bytes, FrameDecoder};
use tasuki_core::control::{Hello, HubMessage, Refusal, SpokeMessage};

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new();
    // Feed in uneven pieces, as a TCP stream would.
    for chunk in data.chunks(7) {
        dec.extend(chunk);
        while let Ok(Some(frame)) = dec.next_frame() {
            let _ = from_bytes::<SpokeMessage>("spoke", &frame);
            let _ = from_bytes::<HubMessage>("hub", &frame);
        }
    }
    let _ = from_bytes::<SpokeMessage>("spoke", data);
    let _ = from_bytes::<HubMessage>("hub", data);
    let _ = from_bytes::<Hello>("hello", data);
    let _ = from_bytes::<Refusal>("refusal", data);
});
