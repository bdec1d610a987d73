//! Config files as an admin writes them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tasuki_shell::config::{parse, HubFile, SpokeFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = parse::<HubFile>(Path::new("hub.toml"), text) {
            // The location must point inside the file.
            assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1);
        }
        let _ = parse::<SpokeFile>(Path::new("spoke.toml"), text);
    }
});
