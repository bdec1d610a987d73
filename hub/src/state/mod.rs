//! The hub's control state: the registry, the current key epochs, the store.
//!
//! One `HubState` sits behind a mutex ([`SharedState`]) shared by the
//! control connections, the admin socket and the rotation tick, locked only
//! for plain calls; the data plane never touches it (it gets commands that
//! never wait, and answers with events).
//! Every change is committed and flushed to the store before anyone hears of it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tasuki_core::admin_api::{HubStatus, InvitationView, SpokeView};
use tasuki_core::control::{HubMessage, Refusal};
use tasuki_core::invitation::InvitationId;
use tasuki_core::keys::{EpochRecord, KeyEpoch, PublicKey, StaticKey};
use tasuki_core::registry::{Enrolled, HubSettings, Registry, SpokeRecord, SpokeState};
use tasuki_core::rotation::{LinkSchedule, RotationPolicy, ScheduleMeta, Trigger};
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::{Store, Write};
use tasuki_shell::vault::KeyVault;
use tokio::sync::mpsc;

use crate::dataplane::{DpCommand, DpHandle, DpStatus, LinkSpec};

mod access;
mod direct;
pub(crate) use direct::PairCounters;
pub(crate) use groups::GroupCounters;
pub(crate) use pair_usage::DirectTotals;
mod error;
mod group_multicast;
#[cfg(test)]
mod group_multicast_tests;
#[cfg(test)]
mod group_tests;
mod group_tick;
mod groups;
mod hierarchy;
#[cfg(test)]
mod hierarchy_tests;
pub(crate) use hierarchy::Tree;
mod ipv6;
mod load;
#[cfg(test)]
mod pair_tests;
mod pair_tick;
mod pairs;
mod request_notices;
#[cfg(test)]
mod request_tests;
mod requests;
mod scope_store;
#[cfg(test)]
mod test_hub;
pub(crate) use error::StateError;

/// What a change to the hub's state returns.
pub(crate) type Result<T, E = StateError> = std::result::Result<T, E>;
mod cluster;
pub(crate) mod engine;
mod outbox;
mod pair_usage;
mod rotation;
pub(crate) use rotation::{endpoints, usage};
mod spokes;
pub(crate) use spokes::EnrolAsk;
mod user_requests;
mod users;
mod wireguard;

/// File holding the hub's static key.
pub(crate) const KEY_FILE: &str = "hub.key";
pub(crate) const STORE_DIR: &str = "store";
pub(crate) const KEYS_DIR: &str = "keys";
pub(crate) const SETTINGS_TREE: &str = "settings";
const SPOKES_TREE: &str = "spokes";
const INVITATIONS_TREE: &str = "invitations";
const EPOCHS_TREE: &str = "epochs";
const SCHEDULES_TREE: &str = "schedules";
const OVERRIDES_TREE: &str = "policy-overrides";
/// Rotations asked for (by an admin or an event) and not begun yet: kept
/// across a crash.
const REQUESTS_TREE: &str = "rotation-requests";
const USERS_TREE: &str = "users";
/// Accounts asked for from a spoke, waiting for an admin.
const REGISTRATIONS_TREE: &str = "registrations";
const LOGINS_TREE: &str = "logins";

fn vault_name(spoke: SpokeId, epoch: u64) -> String {
    format!("{spoke}-{epoch}")
}

/// Puts each epoch's key in the vault (durably) and returns the store writes
/// for their records: keys first, so a record never names a missing key.
fn epoch_writes<'a>(
    vault: &KeyVault,
    spoke: SpokeId,
    epochs: &[KeyEpoch],
) -> anyhow::Result<Vec<Write<'a>>> {
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
pub(crate) fn write_settings<'a>(
    store: &Store,
    settings: &HubSettings,
    ipv6: Option<&tasuki_core::address_plan::Ipv6Plan>,
    more: Vec<Write<'a>>,
) -> anyhow::Result<()> {
    let mut writes: Vec<Write<'a>> = vec![Write::put(SETTINGS_TREE, *b"hub", settings)?];
    writes.extend(more);
    if let Some(plan) = ipv6 {
        writes.push(Write::put(SETTINGS_TREE, IPV6_KEY, plan)?);
    }
    store.commit(&writes)
}

/// Where the IPv6 plan is stored (in the settings tree).
const IPV6_KEY: &[u8] = b"ipv6";

/// The hub's identity key from its state directory.
pub(crate) fn load_key(dir: &Path) -> anyhow::Result<StaticKey> {
    let path = dir.join(KEY_FILE);
    let text = tasuki_shell::files::read_secret_file(&path).with_context(|| {
        format!(
            "no hub identity in {}; run `tasuki-hub init` first",
            dir.display()
        )
    })?;
    StaticKey::from_base64(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// A record whose in-memory state is ahead of the store because writing it
/// failed (a full disk) after the fact it records had already happened (a
/// packet decrypted under a new epoch, a logout): written again at every
/// rotation tick until it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unsaved {
    /// A link's schedule meta.
    Schedule(SpokeId),
    /// Who is logged in on a spoke.
    Logins(SpokeId),
    /// An access request that ended (or changed) in memory only.
    Request(u64),
}

/// The hub state shared by the daemon's tasks. It is locked only for a
/// plain (not async) call, so no task ever holds it across an await: what
/// has to wait for the data plane or the network is awaited outside.
#[derive(Clone)]
pub(crate) struct SharedState(Arc<std::sync::Mutex<HubState>>);

impl SharedState {
    /// Shares `state`.
    pub(crate) fn new(state: HubState) -> Self {
        Self(Arc::new(std::sync::Mutex::new(state)))
    }

    /// Runs `f` on the state, locked for just that call. A call that
    /// panicked (a bug) does not stop the others: a change is committed to
    /// the store before memory takes it, so what the state holds is what
    /// was stored, and the hub goes on with it.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut HubState) -> R) -> R {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }
}

/// Everything the control side of the hub knows.
pub(crate) struct HubState {
    pub(crate) registry: Registry,
    users: tasuki_core::users::Users,
    /// Who is logged in on which spoke (kept across restarts).
    logins: HashMap<SpokeId, std::collections::BTreeSet<String>>,
    schedules: HashMap<SpokeId, LinkSchedule>,
    /// The hub-wide rotation policy.
    pub(crate) policy: RotationPolicy,
    /// Per-spoke policies that replace the hub-wide one.
    overrides: HashMap<SpokeId, RotationPolicy>,
    store: Store,
    vault: KeyVault,
    pub(crate) key: Arc<StaticKey>,
    pub(crate) interface: String,
    dataplane: DpHandle,
    /// Messages that wait for the data plane to take link changes made
    /// before them (see [`outbox::Held`]).
    held: outbox::Held,
    sessions: HashMap<SpokeId, mpsc::Sender<HubMessage>>,
    /// Messages that did not fit a session's queue (see [`outbox`]).
    backlog: outbox::Backlog,
    pub(crate) control_connections: usize,
    audit: crate::audit::AuditLog,
    /// Records to write again (see [`Unsaved`]).
    unsaved: std::collections::BTreeSet<Unsaved>,
    /// Who may reach what (stored; compiled for the data plane).
    access: tasuki_core::access::AccessPolicy,
    /// What the compiled access policy was built from, per active spoke:
    /// when a spoke's facts change, the policy is compiled anew.
    access_facts: HashMap<SpokeId, tasuki_core::access::SpokeFacts>,
    /// Whether the last rotation tick failed to store something (so a
    /// failure is logged once, not every tick).
    tick_failing: bool,
    /// Direct mode: the pairs and their setting (see [`direct`]).
    direct: direct::Direct,
    /// Keyed groups and their schedules (see [`groups`]).
    keyed: groups::Keyed,
    /// Access requests and their policies (see [`requests`]).
    requests: tasuki_core::requests::Requests,
    /// What each spoke was last told waits for each user logged in on it
    /// (see [`request_notices`]).
    approvals_told: HashMap<(SpokeId, String), Vec<tasuki_core::requests::Request>>,
    /// The hub tree: child hubs, the parent's routes, the uplink (see [`hierarchy`]).
    pub(crate) tree: Tree,
    /// Every member of this hub's cluster (empty for a hub on sled):
    /// spokes and invitations carry them.
    cluster_endpoints: Vec<String>,
    /// Whether spokes may attach (an orphaned cluster member turns them
    /// away, see [`crate::cluster`]).
    pub(crate) control_open: bool,
    /// A cluster member's health as its lease keeper last said (`None` on
    /// sled).
    pub(crate) cluster_health: Option<tasuki_core::leadership::Health>,
}

impl HubState {
    /// Links the data plane should carry right now.
    pub(crate) fn link_specs(&self) -> Vec<LinkSpec> {
        self.registry
            .spokes()
            .filter_map(|s| self.link_spec(s.id))
            .collect()
    }

    /// What the data plane should carry for one spoke (an active one with epochs).
    pub(crate) fn link_spec(&self, id: SpokeId) -> Option<LinkSpec> {
        let s = self
            .registry
            .spoke(id)
            .filter(|s| s.state == SpokeState::Active)?;
        let sched = self.schedules.get(&id)?;
        Some(LinkSpec {
            id: s.id,
            public_key: s.public_key,
            tunnel_addr: s.tunnel_addr,
            tunnel_addr6: self.registry.spoke_addr6(s),
            epochs: sched.epochs(),
            carry: self.carries(s.id),
            handshake_epochs: sched.handshake_epochs(),
            confirmed: sched.meta().confirmed,
        })
    }

    /// Flushes the store (on a graceful stop).
    pub(crate) fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    /// What the store's commits cost so far.
    pub(crate) fn commit_counts(&self) -> tasuki_shell::store::CommitCounts {
        self.store.commit_counts()
    }

    /// A spoke's name, for logs and audit records.
    pub(crate) fn spoke_name(&self, id: SpokeId) -> String {
        self.registry
            .spoke(id)
            .map_or_else(|| format!("#{id}"), |s| s.name.clone())
    }

    /// Appends to the audit log.
    pub(crate) fn audit(&mut self, record: tasuki_core::audit::AuditRecord) {
        self.audit.append(&record);
    }

    /// Audit records since `since` (Unix seconds).
    pub(crate) fn audit_since(&self, since: u64) -> Result<Vec<tasuki_core::audit::AuditRecord>> {
        Ok(self.audit.read(since)?)
    }

    /// Hands the data plane a command (see [`DpHandle::send`]).
    fn command(&self, cmd: DpCommand) -> bool {
        self.dataplane.send(cmd)
    }

    /// A handle on the data plane, for queries awaited with the state unlocked.
    pub(crate) fn dataplane(&self) -> DpHandle {
        self.dataplane.clone()
    }

    /// Cuts a spoke off: its control session ends, the data plane forgets it.
    pub(crate) fn cut_off(&mut self, id: SpokeId, refusal: Refusal) {
        self.tell(id, HubMessage::Refused(refusal));
        // Forgetting the queue closes it when the connection's task lets go
        // of its own handle, which the refusal above makes it do.
        self.sessions.remove(&id);
        self.backlog.forget(id);
        self.command(DpCommand::Remove(id));
        self.forget_direct(id, tasuki_shell::unix_now());
        if self.refresh_facts(id) {
            self.push_access();
            self.refresh_pair_rules(tasuki_shell::unix_now());
        }
    }

    /// Hands a link's epochs to the data plane. Messages told after this
    /// wait until the data plane has taken them (see [`outbox::Held`]): an
    /// update notification never reaches a spoke before the hub can answer
    /// its handshake under the new epoch. The access policy follows too,
    /// when the spoke's facts changed (it became active, a user logged in
    /// or out).
    fn push_link(&mut self, id: SpokeId) {
        if self.refresh_facts(id) {
            self.push_access();
            self.refresh_pair_rules(tasuki_shell::unix_now());
        }
        let Some(spec) = self.link_spec(id) else {
            return;
        };
        if self.command(DpCommand::Upsert(spec)) {
            let sync = self.held.barrier();
            if !self.command(DpCommand::Sync(sync)) {
                self.synced(sync); // nothing will answer; nothing waits
            }
        }
    }

    /// Registers the outgoing queue of a spoke's control connection.
    pub(crate) fn attach_session(&mut self, spoke: SpokeId, tx: mpsc::Sender<HubMessage>) {
        self.sessions.insert(spoke, tx);
    }

    /// Forgets a spoke's control connection if `tx` is still the registered one.
    pub(crate) fn detach_session(&mut self, spoke: SpokeId, tx: &mpsc::WeakSender<HubMessage>) {
        let Some(tx) = tx.upgrade() else {
            return; // already forgotten
        };
        if self
            .sessions
            .get(&spoke)
            .is_some_and(|t| t.same_channel(&tx))
        {
            self.sessions.remove(&spoke);
            self.backlog.forget(spoke);
        }
    }

    /// The hub's status for `tasuki-hub status`.
    /// `dp` is the data plane's status, asked for with the state unlocked.
    pub(crate) fn status(&self, dp: Option<&DpStatus>) -> HubStatus {
        let settings = self.registry.settings();
        let count = |st| self.registry.spokes().filter(|s| s.state == st).count();
        HubStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            fingerprint: self.key.public().fingerprint(),
            endpoint: settings.endpoint.clone(),
            tunnel_net: settings.tunnel_net.to_string(),
            tunnel_net6: self.registry.ipv6().map(|p| p.tunnel_net.to_string()),
            routes: settings
                .routes
                .iter()
                .map(ToString::to_string)
                .chain(
                    self.registry
                        .ipv6()
                        .into_iter()
                        .flat_map(|p| p.routes.iter().map(ToString::to_string)),
                )
                .collect(),
            interface: self.interface.clone(),
            spokes_active: count(SpokeState::Active),
            spokes_pending: count(SpokeState::Pending),
            control_connections: self.control_connections,
            access_mode: self.access.mode,
            access_rules: self.access.rules.len(),
            counters: dp.map(|d| d.counters.clone()).unwrap_or_default(),
            pairs: self.pair_count(),
            warnings: self
                .wireguard_warnings(tasuki_shell::unix_now())
                .into_iter()
                .chain(self.tree.uplink_error.clone())
                .chain(self.cluster_warning())
                .collect(),
            parent: self.tree.parent_endpoint.clone(),
            child_hubs: self.tree.map.children().count(),
            cluster: self.cluster_standing(),
        }
    }
}
