//! The hub's control state: the registry, the current key epochs, the store.
//!
//! One `HubState` sits behind a mutex shared by the control connections and
//! the admin socket; the data plane never touches it (it gets commands).
//! Every change is committed and flushed to the store before anyone hears of it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tasuki_core::admin_api::{HubStatus, InvitationView, SpokeView};
use tasuki_core::control::{HubMessage, Refusal};
use tasuki_core::invitation::InvitationId;
use tasuki_core::keys::{KeyEpoch, PublicKey, StaticKey};
use tasuki_core::registry::{
    Enrolled, HubSettings, Registry, RegistryError, SpokeRecord, SpokeState,
};
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::{Store, Write};
use tokio::sync::mpsc;

use crate::dataplane::{DpCommand, LinkSpec};

/// File holding the hub's static key.
pub(crate) const KEY_FILE: &str = "hub.key";
const STORE_DIR: &str = "store";
const SETTINGS_TREE: &str = "settings";
const SPOKES_TREE: &str = "spokes";
const INVITATIONS_TREE: &str = "invitations";
const EPOCHS_TREE: &str = "epochs";

fn epoch_key(spoke: SpokeId, epoch: u64) -> Vec<u8> {
    let mut k = spoke.to_be_bytes().to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

/// Stored as the `hub` entry of the settings tree.
pub(crate) fn write_settings(dir: &Path, settings: &HubSettings) -> Result<()> {
    let store = Store::open(&dir.join(STORE_DIR))?;
    store.commit(&[Write::put(SETTINGS_TREE, *b"hub", settings)?])
}

/// The hub's identity key from its state directory.
pub(crate) fn load_key(dir: &Path) -> Result<StaticKey> {
    let path = dir.join(KEY_FILE);
    let text = tasuki_shell::files::read_secret_file(&path).with_context(|| {
        format!(
            "no hub identity in {}; run `tasuki-hub init` first",
            dir.display()
        )
    })?;
    StaticKey::from_base64(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// Everything the control side of the hub knows.
pub(crate) struct HubState {
    pub(crate) registry: Registry,
    epochs: HashMap<SpokeId, KeyEpoch>,
    store: Store,
    pub(crate) key: Arc<StaticKey>,
    pub(crate) interface: String,
    dataplane: mpsc::Sender<DpCommand>,
    sessions: HashMap<SpokeId, mpsc::Sender<HubMessage>>,
    pub(crate) control_connections: usize,
}

impl HubState {
    /// Loads the registry and epochs from the state directory.
    pub(crate) fn load(
        dir: &Path,
        key: Arc<StaticKey>,
        interface: String,
        dataplane: mpsc::Sender<DpCommand>,
    ) -> Result<Self> {
        let store = Store::open(&dir.join(STORE_DIR))?;
        let settings: HubSettings = store.get(SETTINGS_TREE, b"hub")?.with_context(|| {
            format!(
                "{} has no hub settings; run `tasuki-hub init`",
                dir.display()
            )
        })?;
        let spokes: Vec<SpokeRecord> = store.all(SPOKES_TREE)?;
        let invitations = store.all(INVITATIONS_TREE)?;
        let mut epochs: HashMap<SpokeId, KeyEpoch> = HashMap::new();
        for (spoke, epoch) in store.all::<(SpokeId, KeyEpoch)>(EPOCHS_TREE)? {
            let newer = epochs.get(&spoke).is_none_or(|e| e.number < epoch.number);
            if newer {
                epochs.insert(spoke, epoch);
            }
        }
        Ok(Self {
            registry: Registry::new(settings, spokes, invitations),
            epochs,
            store,
            key,
            interface,
            dataplane,
            sessions: HashMap::new(),
            control_connections: 0,
        })
    }

    /// Links the data plane should carry right now.
    pub(crate) fn link_specs(&self) -> Vec<LinkSpec> {
        self.registry
            .spokes()
            .filter(|s| s.state == SpokeState::Active)
            .filter_map(|s| {
                self.epochs.get(&s.id).map(|e| LinkSpec {
                    id: s.id,
                    public_key: s.public_key,
                    tunnel_addr: s.tunnel_addr,
                    epochs: vec![e.clone()],
                })
            })
            .collect()
    }

    /// Makes an invitation and stores it.
    pub(crate) fn invite(
        &mut self,
        name: &str,
        pre_approved: bool,
        valid_secs: u64,
        now: u64,
    ) -> Result<InvitationView> {
        let hub_key = self.key.public();
        let (record, invitation) = self
            .registry
            .invite(
                name,
                pre_approved,
                valid_secs,
                hub_key,
                now,
                &mut rand_core::OsRng,
            )
            .map_err(|e: RegistryError| anyhow::anyhow!(e))?;
        self.store
            .commit(&[Write::put(INVITATIONS_TREE, record.id.0, &record)?])?;
        tracing::info!(invitation = %record.id, name, pre_approved, "invitation created");
        Ok(InvitationView {
            invitation: invitation.encode(),
            id: record.id.short(),
            name: record.name,
            expires_at: record.expires_at,
            pre_approved,
            hub_fingerprint: hub_key.fingerprint(),
        })
    }

    /// Enrols a spoke whose handshake proved the invitation secret; stores
    /// everything before returning.
    pub(crate) async fn enrol(
        &mut self,
        invitation: &InvitationId,
        spoke_key: PublicKey,
        source: &str,
        hostname: &str,
        now: u64,
    ) -> Result<std::result::Result<(Enrolled, Option<KeyEpoch>), Refusal>> {
        let enrolled = match self.registry.enrol(
            invitation,
            spoke_key,
            source,
            hostname,
            now,
            &mut rand_core::OsRng,
        ) {
            Ok(e) => e,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let spoke = &enrolled.spoke;
        let mut writes = vec![
            Write::put(SPOKES_TREE, spoke.id.to_be_bytes(), spoke)?,
            Write::put(
                INVITATIONS_TREE,
                enrolled.invitation.id.0,
                &enrolled.invitation,
            )?,
        ];
        if let Some(epoch) = &enrolled.first_epoch {
            writes.push(Write::put(
                EPOCHS_TREE,
                epoch_key(spoke.id, epoch.number),
                &(spoke.id, epoch.clone()),
            )?);
        }
        self.store.commit(&writes)?;
        if let Some(epoch) = &enrolled.first_epoch {
            self.epochs.insert(spoke.id, epoch.clone());
            tracing::info!(spoke = %spoke.name, id = spoke.id, epoch = epoch.number, "key epoch issued");
        }
        tracing::info!(
            spoke = %spoke.name, id = spoke.id, from = source, addr = %spoke.tunnel_addr,
            state = ?spoke.state, "spoke enrolled"
        );
        self.push_link(spoke.id).await;
        let current = self.epochs.get(&spoke.id).cloned();
        Ok(Ok((enrolled, current)))
    }

    /// Ensures an active spoke has an epoch (issuing and storing one if not).
    pub(crate) async fn ensure_epoch(&mut self, spoke: SpokeId, now: u64) -> Result<KeyEpoch> {
        if let Some(e) = self.epochs.get(&spoke) {
            return Ok(e.clone());
        }
        let epoch = KeyEpoch::issue(1, now, &mut rand_core::OsRng);
        self.store.commit(&[Write::put(
            EPOCHS_TREE,
            epoch_key(spoke, epoch.number),
            &(spoke, epoch.clone()),
        )?])?;
        self.epochs.insert(spoke, epoch.clone());
        self.push_link(spoke).await;
        Ok(epoch)
    }

    async fn push_link(&self, id: SpokeId) {
        if let Some(spec) = self.link_specs().into_iter().find(|l| l.id == id) {
            let _ = self.dataplane.send(DpCommand::Upsert(spec)).await;
        }
    }

    /// Registers the outgoing queue of a spoke's control connection.
    pub(crate) fn attach_session(&mut self, spoke: SpokeId, tx: mpsc::Sender<HubMessage>) {
        self.sessions.insert(spoke, tx);
    }

    /// Forgets a spoke's control connection if `tx` is still the registered one.
    pub(crate) fn detach_session(&mut self, spoke: SpokeId, tx: &mpsc::Sender<HubMessage>) {
        if self
            .sessions
            .get(&spoke)
            .is_some_and(|t| t.same_channel(tx))
        {
            self.sessions.remove(&spoke);
        }
    }

    /// The admin view of every spoke, with data-plane facts merged in.
    pub(crate) async fn spoke_views(&self) -> Vec<SpokeView> {
        let dp = self.dataplane_status().await;
        self.registry
            .spokes()
            .map(|s| {
                let link = dp.as_ref().and_then(|d| d.links.get(&s.id));
                SpokeView {
                    id: s.id,
                    name: s.name.clone(),
                    state: match s.state {
                        SpokeState::Active => "active",
                        SpokeState::Pending => "pending",
                        SpokeState::Revoked => "revoked",
                    }
                    .into(),
                    tunnel_addr: s.tunnel_addr.to_string(),
                    key_fingerprint: s.public_key.fingerprint(),
                    enrolled_at: s.enrolled_at,
                    enrolled_from: s.enrolled_from.clone(),
                    hostname: s.hostname.clone(),
                    invitation: s.invitation.short(),
                    epoch: self.epochs.get(&s.id).map(|e| e.number),
                    endpoint: link.and_then(|l| l.endpoint.map(|e| e.to_string())),
                    last_handshake_secs: link.and_then(|l| l.last_handshake_secs),
                    rx_bytes: link.map_or(0, |l| l.rx_bytes),
                    tx_bytes: link.map_or(0, |l| l.tx_bytes),
                }
            })
            .collect()
    }

    async fn dataplane_status(&self) -> Option<crate::dataplane::DpStatus> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.dataplane.send(DpCommand::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The hub's status for `tasuki-hub status`.
    pub(crate) async fn status(&self) -> HubStatus {
        let dp = self.dataplane_status().await;
        let settings = self.registry.settings();
        let count = |st| self.registry.spokes().filter(|s| s.state == st).count();
        HubStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            fingerprint: self.key.public().fingerprint(),
            endpoint: settings.endpoint.clone(),
            tunnel_net: settings.tunnel_net.to_string(),
            routes: settings.routes.iter().map(ToString::to_string).collect(),
            interface: self.interface.clone(),
            spokes_active: count(SpokeState::Active),
            spokes_pending: count(SpokeState::Pending),
            control_connections: self.control_connections,
            counters: dp.map(|d| d.counters).unwrap_or_default(),
        }
    }
}
