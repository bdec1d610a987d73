//! The hub's state as it comes back from the state directory at start:
//! the registry, the key epochs (their keys from the vault), the schedules
//! with the rotations still to come, the users and who is logged in.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Context;

use super::*;

impl HubState {
    /// Loads the registry and epochs from the store (`opened`, named by
    /// the state directory `dir`).
    pub(crate) fn load(
        dir: &Path,
        key: Arc<StaticKey>,
        interface: String,
        dataplane: DpHandle,
        opened: engine::Opened,
    ) -> anyhow::Result<Self> {
        tasuki_shell::files::tighten_state_dir(dir)?;
        let engine::Opened { store, vault } = opened;
        // On etcd: every key in one read, not one round trip each.
        vault.preload()?;
        let cluster_endpoints = match store.etcd() {
            Some(etcd) => etcd.members()?,
            None => Vec::new(),
        };
        let settings: HubSettings = store.get(SETTINGS_TREE, b"hub")?.with_context(|| {
            format!(
                "{} has no hub settings; run `tasuki-hub init`",
                dir.display()
            )
        })?;
        let spokes: Vec<SpokeRecord> = store
            .all_upgrading::<SpokeRecord, tasuki_core::registry::LegacySpokeRecord>(SPOKES_TREE)?;
        let invitations = store.all(INVITATIONS_TREE)?;
        let mut named = HashSet::new();
        let schedules = load_schedules(&store, &vault, &mut named)?;
        let active: HashSet<SpokeId> = spokes
            .iter()
            .filter(|s| s.state == SpokeState::Active)
            .map(|s| s.id)
            .collect();
        let direct = direct::load_direct(
            &store,
            &vault,
            |id| active.contains(&id),
            &mut named,
            tasuki_shell::unix_now(),
        )?;
        let keyed = super::groups::load_keyed(&store, &vault, &mut named)?;
        let requests = super::requests::load_requests(&store)?;
        erase_unnamed(&vault, &named)?;
        vault.end_preload();
        let policy = store.get(SETTINGS_TREE, b"policy")?.unwrap_or_default();
        let overrides: HashMap<SpokeId, RotationPolicy> = store
            .all::<(SpokeId, RotationPolicy)>(OVERRIDES_TREE)?
            .into_iter()
            .collect();
        let users = tasuki_core::users::Users::new(
            store.all::<tasuki_core::users::UserRecord>(USERS_TREE)?,
        )
        .with_registrations(store.all::<tasuki_core::users::Registration>(REGISTRATIONS_TREE)?);
        // A revoked spoke's logins ended with it, a removed user's with them.
        let logins = store
            .all::<(SpokeId, BTreeSet<String>)>(LOGINS_TREE)?
            .into_iter()
            .filter(|(id, _)| active.contains(id))
            .map(|(id, logged_in)| {
                let kept = logged_in.into_iter().filter(|u| users.get(u).is_some());
                (id, kept.collect())
            })
            .collect();
        let access = store
            .get(SETTINGS_TREE, access::ACCESS_KEY)?
            .unwrap_or_default();
        let mut registry = Registry::new(settings, spokes, invitations);
        registry.set_ipv6(store.get(SETTINGS_TREE, IPV6_KEY)?);
        // A child hub whose spoke is revoked or denied is gone, even where
        // removing its record failed.
        let dead: HashSet<SpokeId> = registry
            .spokes()
            .filter(|s| s.state.is_dead())
            .map(|s| s.id)
            .collect();
        let children = store
            .all::<tasuki_core::hierarchy::ChildHub>(super::hierarchy::CHILD_HUBS_TREE)?
            .into_iter()
            .filter(|c| c.spoke.is_none_or(|id| !dead.contains(&id)));
        let tree = Tree::new(
            children.collect(),
            dir.join(super::hierarchy::UPLINK_DIR),
            super::hierarchy::uplink_interface(&interface),
        );
        let mut state = Self {
            registry,
            users,
            logins,
            schedules,
            policy,
            overrides,
            vault,
            store,
            key,
            interface,
            dataplane,
            held: outbox::Held::default(),
            sessions: HashMap::new(),
            backlog: outbox::Backlog::default(),
            control_connections: 0,
            audit: crate::audit::AuditLog::open(dir)?,
            unsaved: std::collections::BTreeSet::new(),
            tick_failing: false,
            access,
            access_facts: HashMap::new(),
            direct,
            keyed,
            requests,
            approvals_told: HashMap::new(),
            tree,
            cluster_endpoints,
            control_open: true,
            cluster_health: None,
        };
        state.refresh_all_facts();
        state.unkey_orphan_groups();
        state.end_requests_of_absent(tasuki_shell::unix_now());
        state.recheck_approvals(tasuki_shell::unix_now());
        Ok(state)
    }
}

/// Every link's schedule: its stored epochs with their keys, its meta, and
/// the rotation asked for before the restart that has not begun yet.
fn load_schedules(
    store: &Store,
    vault: &KeyVault,
    named: &mut HashSet<String>,
) -> anyhow::Result<HashMap<SpokeId, LinkSchedule>> {
    let epochs = load_epochs(store, vault, named)?;
    let mut metas: HashMap<SpokeId, ScheduleMeta> = store
        .all::<(SpokeId, ScheduleMeta)>(SCHEDULES_TREE)?
        .into_iter()
        .collect();
    let mut schedules: HashMap<SpokeId, LinkSchedule> = epochs
        .into_iter()
        .map(|(id, list)| {
            let meta = metas.remove(&id).unwrap_or_default();
            (id, LinkSchedule::restore(id, list, meta))
        })
        .collect();
    for (id, trigger) in store.all::<(SpokeId, Trigger)>(REQUESTS_TREE)? {
        if let Some(s) = schedules.get_mut(&id) {
            tracing::info!(spoke = id, trigger = %trigger.name(), "a rotation asked for before the restart is still to come");
            s.request(trigger);
        }
    }
    Ok(schedules)
}

/// Every stored link epoch whose key is in the vault (their vault names
/// are added to `named`).
fn load_epochs(
    store: &Store,
    vault: &KeyVault,
    named: &mut HashSet<String>,
) -> anyhow::Result<HashMap<SpokeId, Vec<KeyEpoch>>> {
    let mut epochs: HashMap<SpokeId, Vec<KeyEpoch>> = HashMap::new();
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
    Ok(epochs)
}

/// Erases the keys in the vault that no loaded record names, link's or
/// pair's: their record never made it to the store (a crash in between),
/// or was removed before the key. Never in use.
fn erase_unnamed(vault: &KeyVault, named: &HashSet<String>) -> anyhow::Result<()> {
    for name in vault.names()? {
        if !named.contains(&name) {
            vault.erase(&name)?;
        }
    }
    Ok(())
}
