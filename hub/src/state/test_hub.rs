//! What the hub state's tests share: a state directory that goes when
//! the test ends, a hub made in it, and spokes enrolled and attached.

use tasuki_core::invitation::Invitation;
use tokio::sync::mpsc;

use super::*;

/// A state directory removed when the test ends.
pub(super) struct TempDir(pub(super) std::path::PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tasuki-hub-{name}-{}-{}",
            std::process::id(),
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

pub(super) fn load(dir: &TempDir, key: &Arc<StaticKey>) -> HubState {
    // A hub just dropped may still hold the store's lock for a moment
    // (sled's flusher thread ends on its own time).
    for _ in 0..50 {
        let (dp, _rx) = DpHandle::channel();
        let loaded = super::engine::open(&dir.0)
            .and_then(|opened| HubState::load(&dir.0, key.clone(), "tsk-test".into(), dp, opened));
        match loaded {
            Ok(st) => return st,
            Err(e) if format!("{e:#}").contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("cannot load the hub: {e:#}"),
        }
    }
    panic!("the store stayed locked")
}

pub(super) fn new_hub(dir: &TempDir) -> (HubState, Arc<StaticKey>) {
    new_hub_in(dir, "100.64.0.0/24")
}

/// A hub whose tunnel network is `net` (room for more spokes).
pub(super) fn new_hub_in(dir: &TempDir, net: &str) -> (HubState, Arc<StaticKey>) {
    let settings = HubSettings {
        endpoint: "hub.example:51820".into(),
        tunnel_net: net.parse().unwrap(),
        routes: vec![],
        keepalive_secs: 25,
    };
    write_settings(
        &super::engine::open(&dir.0).unwrap().store,
        &settings,
        None,
        vec![],
    )
    .unwrap();
    let key = Arc::new(StaticKey::generate(&mut rand_core::OsRng));
    (load(dir, &key), key)
}

/// Enrols an active service spoke, stores its first link epoch's receipt
/// and attaches a session; returns its id and its session's queue.
pub(super) fn spoke(
    st: &mut HubState,
    name: &str,
    now: u64,
) -> (SpokeId, mpsc::Receiver<HubMessage>) {
    let view = st.invite(name, true, true, None, 3600, now).unwrap();
    let invitation = Invitation::decode(&view.invitation).unwrap();
    let key = StaticKey::generate(&mut rand_core::OsRng).public();
    let (enrolled, _) = st
        .enrol(
            &invitation.id,
            key,
            "198.51.100.1:1",
            super::EnrolAsk {
                hostname: name,
                as_user: None,
                serves: None,
            },
            now,
        )
        .unwrap()
        .unwrap();
    let id = enrolled.spoke.id;
    st.ensure_schedule(id, now).unwrap();
    st.on_receipt(id, 1).unwrap();
    let (tx, rx) = mpsc::channel(64);
    st.attach_session(id, tx);
    (id, rx)
}
