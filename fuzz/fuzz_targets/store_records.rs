//! Records read back from the stores (a damaged disk, a bit flip).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tasuki_core::access::AccessPolicy;
use tasuki_core::codec::from_bytes;
use tasuki_core::control::{Lifetime, SpokeConfig};
use tasuki_core::keys::EpochRecord;
use tasuki_core::registry::{HubSettings, InvitationRecord, SpokeRecord};
use tasuki_core::rotation::{RotationPolicy, ScheduleMeta};
use tasuki_core::users::{Registration, UserRecord};

fuzz_target!(|data: &[u8]| {
    let _ = from_bytes::<HubSettings>("settings", data);
    let _ = from_bytes::<SpokeRecord>("spoke", data);
    let _ = from_bytes::<InvitationRecord>("invitation", data);
    let _ = from_bytes::<(u32, EpochRecord)>("epoch", data);
    let _ = from_bytes::<(u32, ScheduleMeta)>("schedule", data);
    let _ = from_bytes::<RotationPolicy>("policy", data);
    let _ = from_bytes::<UserRecord>("user", data);
    let _ = from_bytes::<(EpochRecord, Lifetime)>("held", data);
    let _ = from_bytes::<SpokeConfig>("config", data);
    let _ = from_bytes::<AccessPolicy>("access", data);
    let _ = from_bytes::<Registration>("registration", data);
});
