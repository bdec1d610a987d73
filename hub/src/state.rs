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
use tasuki_core::keys::{EpochRecord, KeyEpoch, PublicKey, StaticKey};
use tasuki_core::registry::{
    Enrolled, HubSettings, Registry, RegistryError, SpokeRecord, SpokeState,
};
use tasuki_core::rotation::{LinkSchedule, RotationPolicy, ScheduleMeta, Trigger, Usage};
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::{Store, Write};
use tasuki_shell::vault::KeyVault;
use tokio::sync::mpsc;

use crate::dataplane::{DpCommand, LinkSpec};

/// File holding the hub's static key.
pub(crate) const KEY_FILE: &str = "hub.key";
const STORE_DIR: &str = "store";
const KEYS_DIR: &str = "keys";
const SETTINGS_TREE: &str = "settings";
const SPOKES_TREE: &str = "spokes";
const INVITATIONS_TREE: &str = "invitations";
const EPOCHS_TREE: &str = "epochs";
const SCHEDULES_TREE: &str = "schedules";
const OVERRIDES_TREE: &str = "policy-overrides";

fn vault_name(spoke: SpokeId, epoch: u64) -> String {
    format!("{spoke}-{epoch}")
}

/// Puts each epoch's key in the vault (durably) and returns the store writes
/// for their records: keys first, so a record never names a missing key.
fn epoch_writes<'a>(
    vault: &KeyVault,
    spoke: SpokeId,
    epochs: &[KeyEpoch],
) -> Result<Vec<Write<'a>>> {
    let mut writes = Vec::with_capacity(epochs.len());
    for epoch in epochs {
        vault.put(&vault_name(spoke, epoch.number), &epoch.key)?;
        writes.push(Write::put(
            EPOCHS_TREE,
            epoch_key(spoke, epoch.number),
            &(spoke, epoch.record()),
        )?);
    }
    Ok(writes)
}

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
    schedules: HashMap<SpokeId, LinkSchedule>,
    /// The hub-wide rotation policy.
    pub(crate) policy: RotationPolicy,
    /// Per-spoke policies that replace the hub-wide one.
    overrides: HashMap<SpokeId, RotationPolicy>,
    store: Store,
    vault: KeyVault,
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
        let vault = KeyVault::open(&dir.join(KEYS_DIR))?;
        let mut epochs: HashMap<SpokeId, Vec<KeyEpoch>> = HashMap::new();
        let mut named = std::collections::HashSet::new();
        for (spoke, record) in store.all::<(SpokeId, EpochRecord)>(EPOCHS_TREE)? {
            let name = vault_name(spoke, record.number);
            match vault.get(&name)? {
                Some(key) => {
                    named.insert(name);
                    epochs
                        .entry(spoke)
                        .or_default()
                        .push(KeyEpoch::from_record(record, key));
                }
                None => tracing::error!(
                    spoke,
                    epoch = record.number,
                    "the key of a stored epoch is missing from the key directory; skipping it"
                ),
            }
        }
        // Keys whose record never made it to the store (a crash in between) or
        // whose record was removed before the key: never in use, erase them.
        for name in vault.names()? {
            if !named.contains(&name) {
                vault.erase(&name)?;
            }
        }
        let mut metas: HashMap<SpokeId, ScheduleMeta> = store
            .all::<(SpokeId, ScheduleMeta)>(SCHEDULES_TREE)?
            .into_iter()
            .collect();
        let schedules = epochs
            .into_iter()
            .map(|(id, list)| {
                let meta = metas.remove(&id).unwrap_or_default();
                (id, LinkSchedule::restore(id, list, meta))
            })
            .collect();
        let policy = store.get(SETTINGS_TREE, b"policy")?.unwrap_or_default();
        let overrides: HashMap<SpokeId, RotationPolicy> = store
            .all::<(SpokeId, RotationPolicy)>(OVERRIDES_TREE)?
            .into_iter()
            .collect();
        Ok(Self {
            registry: Registry::new(settings, spokes, invitations),
            schedules,
            policy,
            overrides,
            vault,
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
                self.schedules.get(&s.id).map(|sched| LinkSpec {
                    id: s.id,
                    public_key: s.public_key,
                    tunnel_addr: s.tunnel_addr,
                    epochs: sched.epochs(),
                    handshake_epochs: sched.handshake_epochs(),
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
        let mut schedule = None;
        if let Some(epoch) = &enrolled.first_epoch {
            writes.extend(epoch_writes(
                &self.vault,
                spoke.id,
                std::slice::from_ref(epoch),
            )?);
            let sched =
                LinkSchedule::restore(spoke.id, vec![epoch.clone()], ScheduleMeta::default());
            writes.push(Write::put(
                SCHEDULES_TREE,
                spoke.id.to_be_bytes(),
                &(spoke.id, sched.meta().clone()),
            )?);
            schedule = Some(sched);
        }
        self.store.commit(&writes)?;
        if let (Some(epoch), Some(sched)) = (&enrolled.first_epoch, schedule) {
            self.schedules.insert(spoke.id, sched);
            tracing::info!(spoke = %spoke.name, id = spoke.id, epoch = epoch.number, "key epoch issued");
        }
        tracing::info!(
            spoke = %spoke.name, id = spoke.id, from = source, addr = %spoke.tunnel_addr,
            state = ?spoke.state, "spoke enrolled"
        );
        self.push_link(spoke.id).await;
        let first = enrolled.first_epoch.clone();
        Ok(Ok((enrolled, first)))
    }

    /// Ensures an active spoke has a key schedule (issuing and storing a first
    /// epoch if not); returns what the spoke still needs to hear: the
    /// deliveries it has not acknowledged and a pending update notification.
    pub(crate) async fn ensure_schedule(
        &mut self,
        spoke: SpokeId,
        now: u64,
    ) -> Result<Vec<HubMessage>> {
        if !self.schedules.contains_key(&spoke) {
            let mut sched = LinkSchedule::restore(spoke, vec![], ScheduleMeta::default());
            let epoch = sched.issue(now, &mut rand_core::OsRng);
            self.commit_issue(spoke, &sched, &[epoch])?;
            self.schedules.insert(spoke, sched);
            self.push_link(spoke).await;
        }
        let policy = self.policy_for(spoke).clone();
        let Some(sched) = self.schedules.get_mut(&spoke) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<HubMessage> = sched
            .deliveries(&policy)?
            .into_iter()
            .map(HubMessage::KeyDistribution)
            .collect();
        if let Some(k) = sched.notification(&policy) {
            out.push(HubMessage::UpdateNotification { epoch: k });
        }
        Ok(out)
    }

    fn commit_issue(
        &self,
        spoke: SpokeId,
        sched: &LinkSchedule,
        epochs: &[KeyEpoch],
    ) -> Result<()> {
        let mut writes = epoch_writes(&self.vault, spoke, epochs)?;
        writes.push(Write::put(
            SCHEDULES_TREE,
            spoke.to_be_bytes(),
            &(spoke, sched.meta().clone()),
        )?);
        self.store.commit(&writes)
    }

    fn commit_meta(&self, spoke: SpokeId) -> Result<()> {
        if let Some(sched) = self.schedules.get(&spoke) {
            self.store.commit(&[Write::put(
                SCHEDULES_TREE,
                spoke.to_be_bytes(),
                &(spoke, sched.meta().clone()),
            )?])?;
        }
        Ok(())
    }

    /// Receipt report from a spoke: epoch `k` takes new handshakes from now.
    /// Returns the update notification to send back, if the spoke should switch.
    pub(crate) async fn on_receipt(
        &mut self,
        spoke: SpokeId,
        k: u64,
    ) -> Result<Option<HubMessage>> {
        let policy = self.policy_for(spoke).clone();
        let Some(sched) = self.schedules.get_mut(&spoke) else {
            return Ok(None);
        };
        let moved = sched.on_receipt(k);
        let note = sched.notification(&policy);
        if moved {
            self.commit_meta(spoke)?;
            self.push_link(spoke).await;
            tracing::info!(spoke, epoch = k, "receipt report: epoch takes handshakes");
        }
        Ok(note.map(|epoch| HubMessage::UpdateNotification { epoch }))
    }

    /// The data plane decrypted a packet under epoch `k` of `spoke`.
    pub(crate) fn on_confirmed(
        &mut self,
        spoke: SpokeId,
        k: u64,
        now: u64,
        usage: Usage,
    ) -> Result<()> {
        let grace = self.policy_for(spoke).grace_secs;
        let Some(sched) = self.schedules.get_mut(&spoke) else {
            return Ok(());
        };
        if sched.on_confirmed(k, now, usage, grace) {
            tracing::info!(
                spoke,
                epoch = k,
                rotations = sched.meta().rotations,
                "epoch confirmed: carrying traffic"
            );
            self.commit_meta(spoke)?;
        }
        Ok(())
    }

    /// Asks for a rotation of one spoke's link, or of all.
    pub(crate) fn request_rotation(
        &mut self,
        name: Option<&str>,
        trigger: Trigger,
    ) -> Result<usize> {
        let ids: Vec<SpokeId> = match name {
            Some(n) => {
                let s = self
                    .registry
                    .spoke_by_name(n)
                    .ok_or_else(|| anyhow::anyhow!(RegistryError::NoSuchSpoke(n.to_owned())))?;
                if !self.schedules.contains_key(&s.id) {
                    anyhow::bail!(
                        "spoke {n:?} has no key epochs (pending, revoked, or never attached)"
                    );
                }
                vec![s.id]
            }
            None => self.schedules.keys().copied().collect(),
        };
        for id in &ids {
            if let Some(s) = self.schedules.get_mut(id) {
                s.request(trigger.clone());
            }
        }
        Ok(ids.len())
    }

    /// Asks for a rotation of one link, by spoke id (named events).
    pub(crate) fn request_rotation_of(&mut self, spoke: SpokeId, trigger: Trigger) {
        if let Some(s) = self.schedules.get_mut(&spoke) {
            s.request(trigger);
        }
    }

    /// The policy that applies to one spoke's link.
    pub(crate) fn policy_for(&self, spoke: SpokeId) -> &RotationPolicy {
        self.overrides.get(&spoke).unwrap_or(&self.policy)
    }

    fn spoke_id(&self, name: &str) -> Result<SpokeId> {
        self.registry
            .spoke_by_name(name)
            .map(|s| s.id)
            .ok_or_else(|| anyhow::anyhow!(RegistryError::NoSuchSpoke(name.to_owned())))
    }

    /// The policy in force for `spoke` (by name), or the hub-wide one.
    pub(crate) fn policy_of(&self, spoke: Option<&str>) -> Result<RotationPolicy> {
        Ok(match spoke {
            Some(n) => self.policy_for(self.spoke_id(n)?).clone(),
            None => self.policy.clone(),
        })
    }

    /// Sets and stores the hub-wide policy, or one spoke's override
    /// (`reset` drops the override so the hub-wide policy applies again).
    pub(crate) fn set_policy(
        &mut self,
        spoke: Option<&str>,
        policy: Option<RotationPolicy>,
    ) -> Result<RotationPolicy> {
        match (spoke, policy) {
            (None, Some(policy)) => {
                self.store
                    .commit(&[Write::put(SETTINGS_TREE, *b"policy", &policy)?])?;
                self.policy = policy;
            }
            (None, None) => anyhow::bail!("only a spoke's override can be reset"),
            (Some(name), Some(policy)) => {
                let id = self.spoke_id(name)?;
                self.store.commit(&[Write::put(
                    OVERRIDES_TREE,
                    id.to_be_bytes(),
                    &(id, policy.clone()),
                )?])?;
                self.overrides.insert(id, policy);
            }
            (Some(name), None) => {
                let id = self.spoke_id(name)?;
                self.store
                    .commit(&[Write::remove(OVERRIDES_TREE, id.to_be_bytes())])?;
                self.overrides.remove(&id);
            }
        }
        self.policy_of(spoke)
    }

    /// One rotation tick: issue epochs that are due (for spokes whose control
    /// channel is up), erase epochs whose grace passed. `usage` gives each
    /// link's cumulative use.
    pub(crate) async fn rotation_tick(
        &mut self,
        now: u64,
        usage: &HashMap<SpokeId, Usage>,
    ) -> Result<()> {
        let ids: Vec<SpokeId> = self.schedules.keys().copied().collect();
        for id in ids {
            let total = usage.get(&id).copied().unwrap_or_default();
            let erased = self
                .schedules
                .get_mut(&id)
                .map(|s| s.take_erasable(now))
                .unwrap_or_default();
            if !erased.is_empty() {
                let writes: Vec<Write<'_>> = erased
                    .iter()
                    .map(|k| Write::remove(EPOCHS_TREE, epoch_key(id, *k)))
                    .collect();
                // Record first, then the key: a crash in between leaves an
                // orphan key file that the next start erases.
                self.store.commit(&writes)?;
                for k in &erased {
                    self.vault.erase(&vault_name(id, *k))?;
                }
                self.push_link(id).await;
                tracing::info!(spoke = id, epochs = ?erased, "ended epochs erased");
            }
            let Some(session) = self.sessions.get(&id).cloned() else {
                continue;
            };
            let policy = self.policy_for(id).clone();
            let Some(sched) = self.schedules.get_mut(&id) else {
                continue;
            };
            let mut issued = Vec::new();
            let mut trigger = None;
            if policy.batch > 0 {
                issued = sched.fill_batch(&policy, now, &mut rand_core::OsRng);
            } else if let Some(t) = sched.due(&policy, now, total) {
                issued.push(sched.issue(now, &mut rand_core::OsRng));
                trigger = Some(t);
            }
            let switch = if policy.batch > 0 {
                sched.take_switch()
            } else {
                None
            };
            let deliveries = if issued.is_empty() {
                Vec::new()
            } else {
                sched.deliveries(&policy)?
            };
            let sched = sched.clone();
            if !issued.is_empty() || switch.is_some() {
                // Durable before it is sent.
                self.commit_issue(id, &sched, &issued)?;
            }
            for e in &issued {
                tracing::info!(
                    spoke = id, epoch = e.number,
                    trigger = %trigger.as_ref().map_or("batch".into(), |t| t.name()),
                    "key epoch issued"
                );
            }
            for d in deliveries {
                let _ = session.try_send(HubMessage::KeyDistribution(d));
            }
            if let Some((k, t)) = switch {
                tracing::info!(spoke = id, epoch = k, trigger = %t.name(), "update notification");
                let _ = session.try_send(HubMessage::UpdateNotification { epoch: k });
            }
        }
        Ok(())
    }

    /// Per-link key status for `tasuki-hub key status`.
    pub(crate) fn key_status(
        &self,
        now: u64,
        usage: &HashMap<SpokeId, Usage>,
    ) -> Vec<tasuki_core::admin_api::LinkKeyView> {
        let mut out: Vec<_> = self
            .schedules
            .iter()
            .map(|(id, s)| {
                let used = s.usage(usage.get(id).copied().unwrap_or_default());
                tasuki_core::admin_api::LinkKeyView {
                    spoke: self
                        .registry
                        .spoke(*id)
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                    epoch: s.meta().confirmed,
                    latest: s.latest(),
                    acked: s.meta().acked,
                    held: s.epochs().iter().map(|e| e.number).collect(),
                    age_secs: now.saturating_sub(s.meta().current_since),
                    packets: used.packets,
                    bytes: used.bytes,
                    handshakes: used.handshakes,
                    rotations: s.meta().rotations,
                    next_interval_in: s.next_interval_in(self.policy_for(*id), now),
                    policy_override: self.overrides.contains_key(id),
                    control_connected: self.sessions.contains_key(id),
                }
            })
            .collect();
        out.sort_by(|a, b| a.spoke.cmp(&b.spoke));
        out
    }

    /// Each link's cumulative use from the data plane.
    pub(crate) async fn usage(&self) -> HashMap<SpokeId, Usage> {
        self.dataplane_status()
            .await
            .map(|d| {
                d.links
                    .iter()
                    .map(|(id, l)| {
                        let usage = Usage {
                            packets: l.packets,
                            bytes: l.rx_bytes + l.tx_bytes,
                            handshakes: l.handshakes,
                        };
                        (*id, usage)
                    })
                    .collect()
            })
            .unwrap_or_default()
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
                    epoch: self.schedules.get(&s.id).map(|e| e.meta().confirmed),
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
