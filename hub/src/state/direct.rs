//! Direct mode at the hub (claim 10): what it keeps for it (the pair book,
//! the direct-mode setting, what spokes told of their addresses), the
//! setting's store records and the admin's edits, and how a pair's epochs
//! and meta are stored and erased. The pairs' messages are in
//! [`super::pairs`], their tick in [`super::pair_tick`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use tasuki_core::access::PairRules;

use tasuki_core::admin_api::DirectView;
use tasuki_core::keys::KeyEpoch;
use tasuki_core::pair::PairId;
use tasuki_core::pair_book::PairBook;
use tasuki_core::pair_rules::DirectMode;
use tasuki_core::pair_schedule::PairSchedule;
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::Write;

use super::*;

/// The hub-wide direct mode's entry in the settings tree.
pub(super) const DIRECT_KEY: &[u8] = b"direct";
/// Per-spoke direct modes that replace the hub-wide one.
pub(super) const DIRECT_TREE: &str = "direct-overrides";
/// Each pair's [`tasuki_core::pair_schedule::PairMeta`], by pair.
pub(super) const PAIRS_TREE: &str = "pairs";
/// Each pair epoch's record (its key is in the vault), by pair and number.
pub(super) const PAIR_EPOCHS_TREE: &str = "pair-epochs";

/// The vault name of a pair epoch's key: apart from links' `{spoke}-{epoch}`.
pub(super) fn pair_vault_name(pair: PairId, epoch: u64) -> String {
    let [low, high] = pair.holders();
    format!("pair-{low}-{high}-{epoch}")
}

/// A pair's key in the pairs tree.
pub(super) fn pair_key(pair: PairId) -> Vec<u8> {
    let [low, high] = pair.holders();
    let mut k = low.to_be_bytes().to_vec();
    k.extend_from_slice(&high.to_be_bytes());
    k
}

/// A pair epoch's key in the pair-epochs tree.
fn pair_epoch_key(pair: PairId, epoch: u64) -> Vec<u8> {
    let mut k = pair_key(pair);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

/// Counts of what spokes sent about pairs that the hub would not take.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PairCounters {
    /// Requests refused (a reason was sent back).
    pub(crate) refused: u64,
    /// Reports about a pair the hub does not key, or from a non-holder.
    pub(crate) unknown: u64,
    /// Requests over a spoke's budget, dropped unanswered (a flood).
    pub(crate) flooded: u64,
}

/// Pair requests one spoke may make per [`REQUEST_WINDOW_SECS`] (a spoke
/// asks once per peer every 10 s at most; more is a flood).
pub(crate) const REQUESTS_PER_WINDOW: u32 = 64;
/// The window of [`REQUESTS_PER_WINDOW`].
pub(crate) const REQUEST_WINDOW_SECS: u64 = 10;

/// What the hub keeps for direct mode.
#[derive(Debug, Default)]
pub(crate) struct Direct {
    /// Every pair and its schedule.
    pub(super) book: PairBook,
    /// The hub-wide setting.
    pub(super) mode: DirectMode,
    /// Spokes whose setting differs from the hub-wide one.
    pub(super) overrides: HashMap<SpokeId, DirectMode>,
    /// Each spoke's local addresses, as it last reported them (memory only).
    pub(super) local: HashMap<SpokeId, Vec<SocketAddr>>,
    /// Where the data plane last saw each spoke's datagrams come from.
    pub(super) seen: HashMap<SpokeId, SocketAddr>,
    /// Ended pairs whose records could not be removed yet (a full disk),
    /// with the newest epoch they had: removed again at every pair tick.
    pub(super) unerased: BTreeMap<PairId, u64>,
    /// What was not taken.
    pub(crate) counters: PairCounters,
    /// The access rules each pair's holders were last sent (memory only:
    /// sent again after every attach).
    pub(super) rules_sent: HashMap<PairId, PairRules>,
    /// Each spoke's pair requests in the current window: its start and count.
    pub(super) requests: HashMap<SpokeId, (u64, u32)>,
    /// What each holder last reported of each pair (memory only).
    pub(super) usage: HashMap<(PairId, SpokeId), tasuki_core::control::PairUsage>,
    /// Each pair's direct traffic both ways since the start.
    pub(super) pair_use: HashMap<PairId, tasuki_core::rotation::Usage>,
    /// Direct traffic over all pairs since the start.
    pub(super) totals: super::pair_usage::DirectTotals,
}

impl Direct {
    /// Whether `spoke` may make one more pair request now; counts it.
    pub(super) fn within_budget(&mut self, spoke: SpokeId, now: u64) -> bool {
        let entry = self.requests.entry(spoke).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= REQUEST_WINDOW_SECS {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > REQUESTS_PER_WINDOW {
            self.counters.flooded += 1;
            return false;
        }
        true
    }
}

impl HubState {
    /// Tells every attached spoke that what refused its pair requests may
    /// have changed, so a running flow goes direct now, not after the
    /// refusal's quiet time.
    pub(super) fn ask_pairs_again(&mut self) {
        let ids: Vec<SpokeId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.tell(
                id,
                HubMessage::Pair(tasuki_core::control::HubPair::Reconsider),
            );
        }
    }

    /// The direct mode in force for `spoke`.
    pub(crate) fn direct_for(&self, spoke: SpokeId) -> DirectMode {
        self.direct
            .overrides
            .get(&spoke)
            .copied()
            .unwrap_or(self.direct.mode)
    }

    /// The direct-mode setting: hub-wide, or in force for `spoke` (by name).
    pub(crate) fn direct_view(&self, spoke: Option<&str>) -> Result<DirectView> {
        let id = spoke.map(|n| self.spoke_id(n)).transpose()?;
        Ok(DirectView {
            hub: self.direct.mode,
            spoke: spoke.map(str::to_owned),
            direct: id.map_or(self.direct.mode, |id| self.direct_for(id)),
            overridden: id.is_some_and(|id| self.direct.overrides.contains_key(&id)),
            pairs_ended: 0,
        })
    }

    /// Sets and stores the hub-wide direct mode, or one spoke's override
    /// (`None` drops it). Stored before it applies; pairs it turns off end
    /// at once, both holders told.
    pub(crate) fn set_direct(
        &mut self,
        spoke: Option<&str>,
        mode: Option<DirectMode>,
        now: u64,
    ) -> Result<DirectView> {
        let id = spoke.map(|n| self.spoke_id(n)).transpose()?;
        let write = match (id, mode) {
            (None, Some(m)) => Write::put(SETTINGS_TREE, DIRECT_KEY, &m)?,
            (None, None) => {
                return Err(StateError::Invalid(
                    "only a spoke's direct-mode override can be reset".into(),
                ))
            }
            (Some(id), Some(m)) => Write::put(DIRECT_TREE, id.to_be_bytes(), &(id, m))?,
            (Some(id), None) => Write::remove(DIRECT_TREE, id.to_be_bytes()),
        };
        self.store
            .commit(&[write])
            .map_err(|e| StateError::from(e).context("the direct-mode setting was not stored"))?;
        match (id, mode) {
            (None, Some(m)) => self.direct.mode = m,
            (Some(id), Some(m)) => {
                self.direct.overrides.insert(id, m);
            }
            (Some(id), None) => {
                self.direct.overrides.remove(&id);
            }
            (None, None) => {}
        }
        tracing::info!(spoke = ?spoke, mode = ?mode, "direct-mode setting changed");
        if mode == Some(DirectMode::Auto) {
            self.ask_pairs_again();
        }
        let ended = self.end_pairs_where(now, "direct mode turned off", |st, pair| {
            pair.holders()
                .iter()
                .any(|h| st.direct_for(*h) == DirectMode::Off)
        });
        let mut view = self.direct_view(spoke)?;
        view.pairs_ended = ended;
        Ok(view)
    }

    /// Stores a pair's new epoch (key in the vault, record and meta in the
    /// store, flushed): before anything about it is sent. On failure the
    /// key file is erased again.
    pub(super) fn commit_pair_issue(
        &self,
        sched: &PairSchedule,
        issued: Option<&KeyEpoch>,
    ) -> Result<()> {
        let pair = sched.pair();
        let at = super::scope_store::ScopeRecords {
            epochs_tree: PAIR_EPOCHS_TREE,
            epoch_key: &|k| pair_epoch_key(pair, k),
            vault_name: &|k| pair_vault_name(pair, k),
            meta: Write::put(PAIRS_TREE, pair_key(pair), &(pair, sched.meta()))?,
            what: format!("pair {pair}"),
        };
        self.commit_scope_issue(at, issued.map(|e| (e, (pair, e.record()))))
    }

    /// Stores a pair's meta after a report moved it.
    pub(super) fn commit_pair_meta(&self, sched: &PairSchedule) -> Result<()> {
        let pair = sched.pair();
        self.store.commit(&[Write::put(
            PAIRS_TREE,
            pair_key(pair),
            &(pair, sched.meta().clone()),
        )?])?;
        Ok(())
    }

    /// Erases some of a pair's epochs: the records (with the meta as it is
    /// now, when the pair goes on) first, then the keys (a crash in between
    /// leaves key files that the next start erases).
    pub(super) fn erase_pair_epochs(
        &self,
        pair: PairId,
        epochs: &[u64],
        meta: Option<&tasuki_core::pair_schedule::PairMeta>,
    ) -> Result<()> {
        let mut writes: Vec<Write<'_>> = epochs
            .iter()
            .map(|k| Write::remove(PAIR_EPOCHS_TREE, pair_epoch_key(pair, *k)))
            .collect();
        writes.push(match meta {
            Some(m) => Write::put(PAIRS_TREE, pair_key(pair), &(pair, m.clone()))?,
            None => Write::remove(PAIRS_TREE, pair_key(pair)),
        });
        self.store.commit(&writes)?;
        for k in epochs {
            self.erase_pair_key(pair, *k);
        }
        Ok(())
    }

    /// Erases one pair key file; an error is logged (the next start erases
    /// a key file no record names).
    fn erase_pair_key(&self, pair: PairId, epoch: u64) {
        if let Err(e) = self.vault.erase(&pair_vault_name(pair, epoch)) {
            tracing::error!(%pair, epoch, error = %format!("{e:#}"), "cannot erase a pair key; the next start erases it");
        }
    }

    /// Removes again the records of ended pairs that could not be removed
    /// before.
    pub(super) fn erase_unerased_pairs(&mut self) -> Result<()> {
        for (pair, latest) in std::mem::take(&mut self.direct.unerased) {
            let all: Vec<u64> = (1..=latest).collect();
            if let Err(e) = self.erase_pair_epochs(pair, &all, None) {
                self.direct.unerased.insert(pair, latest);
                return Err(e.context(format!("erasure of ended pair {pair}")));
            }
        }
        Ok(())
    }
}

/// The direct-mode setting and the pairs, as stored: every pair epoch
/// whose key is in the vault (their vault names are added to `named`),
/// grouped with its pair's meta, counted as used `now`. Pairs whose
/// holders are not both `active`
/// are left out (their keys are erased with the other unnamed ones).
pub(super) fn load_direct(
    store: &Store,
    vault: &KeyVault,
    active: impl Fn(SpokeId) -> bool,
    named: &mut std::collections::HashSet<String>,
    now: u64,
) -> anyhow::Result<Direct> {
    let mode = store.get(SETTINGS_TREE, DIRECT_KEY)?.unwrap_or_default();
    let overrides = store
        .all::<(SpokeId, DirectMode)>(DIRECT_TREE)?
        .into_iter()
        .collect();
    let mut metas: HashMap<PairId, tasuki_core::pair_schedule::PairMeta> =
        store.all(PAIRS_TREE)?.into_iter().collect();
    let mut epochs: BTreeMap<PairId, Vec<KeyEpoch>> = BTreeMap::new();
    let mut unerased = BTreeMap::new();
    for (pair, record) in store.all::<(PairId, tasuki_core::keys::EpochRecord)>(PAIR_EPOCHS_TREE)? {
        if !pair.holders().into_iter().all(&active) {
            let latest: &mut u64 = unerased.entry(pair).or_default();
            *latest = (*latest).max(record.number);
            continue;
        }
        let name = pair_vault_name(pair, record.number);
        match vault.get(&name)? {
            Some(key) => {
                named.insert(name);
                epochs
                    .entry(pair)
                    .or_default()
                    .push(KeyEpoch::from_record(record, key));
            }
            None => {
                tracing::error!(%pair, epoch = record.number, "the key of a stored pair epoch is missing; skipping it")
            }
        }
    }
    let schedules: Vec<PairSchedule> = epochs
        .into_iter()
        .map(|(pair, list)| {
            let mut meta = metas.remove(&pair).unwrap_or_default();
            // Use reports are memory only: a restored pair counts as used
            // now, or a restart would end every pair that talks.
            meta.last_used = meta.last_used.max(now);
            PairSchedule::restore(pair, list, meta)
        })
        .collect();
    // Metas with no epoch left are pairs that ended (their records go at
    // the first pair tick), but for pairs keyed by a group: they have none.
    let mut schedules = schedules;
    for (pair, mut meta) in metas {
        if meta.via.is_some() && pair.holders().into_iter().all(&active) {
            meta.last_used = meta.last_used.max(now);
            schedules.push(PairSchedule::restore(pair, Vec::new(), meta));
        } else {
            unerased.entry(pair).or_insert(0);
        }
    }
    if !schedules.is_empty() {
        tracing::info!(pairs = schedules.len(), "pairs restored");
    }
    Ok(Direct {
        book: PairBook::restore(Default::default(), schedules),
        mode,
        overrides,
        unerased,
        ..Direct::default()
    })
}
