//! The spoke's durable state: identity key, pinned hub key, enrolment,
//! configuration and key epochs. Written and flushed before anything is
//! acknowledged to the hub.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tasuki_core::access::PairRules;
use tasuki_core::control::Lifetime;
use tasuki_core::control::PairPeer;
use tasuki_core::control::SpokeConfig;
use tasuki_core::keys::{EpochRecord, KeyEpoch};
use tasuki_core::keys::{PublicKey, StaticKey};
use tasuki_core::pair::PairId;
use tasuki_core::spoke_groups::StoredGroup;
use tasuki_core::spoke_keys::HeldEpoch;
use tasuki_core::spoke_pairs::StoredPair;
use tasuki_shell::store::{Store, Write};
use tasuki_shell::vault::KeyVault;

/// The spoke's identity key file.
pub(crate) const KEY_FILE: &str = "spoke.key";
/// The pinned hub key file.
pub(crate) const HUB_KEY_FILE: &str = "hub.pub";
const STORE_DIR: &str = "store";
const KEYS_DIR: &str = "keys";
const META_TREE: &str = "meta";
const EPOCHS_TREE: &str = "epochs";
/// Direct mode: one record per pair (its peer, epochs and current epoch);
/// the pair epochs' keys are in the vault under [`pair_key_name`].
const PAIRS_TREE: &str = "pairs";

/// What the store keeps of one pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PairRecord {
    pair: PairId,
    peer: PairPeer,
    current: u64,
    epochs: Vec<EpochRecord>,
    /// The access rules last heard (none: nothing direct passes).
    #[serde(default)]
    rules: Option<PairRules>,
    /// The keyed group whose epochs key the pair (its epochs are derived
    /// from the group's, never stored).
    #[serde(default)]
    via: Option<String>,
}

fn pair_key(pair: PairId) -> Vec<u8> {
    let [low, high] = pair.holders();
    let mut k = low.to_be_bytes().to_vec();
    k.extend_from_slice(&high.to_be_bytes());
    k
}

/// A pair epoch's key file in the vault (link epochs' are their number).
fn pair_key_name(pair: PairId, epoch: u64) -> String {
    format!("pair-{pair}-{epoch}")
}

/// Keyed groups: one record per group (its epochs and the one in use);
/// the group epochs' keys are in the vault under [`group_key_name`].
const GROUPS_TREE: &str = "groups";

/// What the store keeps of one keyed group.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GroupRecord {
    group: String,
    current: u64,
    epochs: Vec<EpochRecord>,
}

/// A group epoch's key file in the vault.
fn group_key_name(group: &str, epoch: u64) -> String {
    format!("group-{}-{epoch}", tasuki_core::group::file_tag(group))
}

/// What the spoke learned when it enrolled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Enrolment {
    pub(crate) name: String,
    pub(crate) hub_endpoint: String,
    pub(crate) hub_key: PublicKey,
}

/// Whether the state directory `dir` holds an enrolment (active or
/// waiting for approval). Creates nothing, and erases no key (opening a
/// [`SpokeStore`] would): a directory or store that is not there holds none.
pub(crate) fn is_enrolled(dir: &Path) -> Result<bool> {
    let path = dir.join(STORE_DIR);
    let exists = path
        .try_exists()
        .with_context(|| format!("cannot look at {}", path.display()))?;
    if !exists {
        return Ok(false);
    }
    let store = Store::open(&path)?;
    Ok(read_enrolment(dir, &store)?.is_some())
}

/// The enrolment `store` holds for the state directory `dir`, checked
/// against the pinned key file.
fn read_enrolment(dir: &Path, store: &Store) -> Result<Option<Enrolment>> {
    let Some(e) = store.get::<Enrolment>(META_TREE, b"enrolment")? else {
        return Ok(None);
    };
    let path = dir.join(HUB_KEY_FILE);
    let pinned = tasuki_shell::files::read_secret_file(&path)?;
    let pinned = PublicKey::from_base64(&pinned)
        .with_context(|| format!("{} is damaged", path.display()))?;
    if pinned != e.hub_key {
        anyhow::bail!(
            "{} does not match the hub key in the store; the state directory was tampered with",
            path.display()
        );
    }
    Ok(Some(e))
}

/// The spoke's state directory.
pub(crate) struct SpokeStore {
    dir: PathBuf,
    store: Store,
    /// Epoch keys, one erasable file each (never in the store).
    vault: KeyVault,
}

impl SpokeStore {
    /// Opens (creating) the store in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        tasuki_shell::files::ensure_private_dir(dir)?;
        tasuki_shell::files::tighten_state_dir(dir)?;
        let store = Store::open(&dir.join(STORE_DIR))?;
        let vault = KeyVault::open(&dir.join(KEYS_DIR))?;
        // Keys whose record never reached the store, or whose record is gone:
        // never acknowledged or no longer used, so erase them.
        let mut recorded: Vec<String> = store
            .all::<(EpochRecord, Lifetime)>(EPOCHS_TREE)?
            .iter()
            .map(|(r, _)| r.number.to_string())
            .collect();
        for record in store.all::<PairRecord>(PAIRS_TREE)? {
            let pair = record.pair;
            recorded.extend(record.epochs.iter().map(|e| pair_key_name(pair, e.number)));
        }
        for record in store.all::<GroupRecord>(GROUPS_TREE)? {
            let group = &record.group;
            recorded.extend(
                record
                    .epochs
                    .iter()
                    .map(|e| group_key_name(group, e.number)),
            );
        }
        for name in vault.names()? {
            if !recorded.contains(&name) {
                vault.erase(&name)?;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            store,
            vault,
        })
    }

    /// The identity key, creating it if there is none yet.
    pub(crate) fn key_or_create(&self) -> Result<StaticKey> {
        let path = self.dir.join(KEY_FILE);
        if path.exists() {
            return self.key();
        }
        let key = StaticKey::generate(&mut rand_core::OsRng);
        tasuki_shell::files::write_secret_file(&path, key.to_base64().as_bytes())?;
        Ok(key)
    }

    /// The identity key.
    pub(crate) fn key(&self) -> Result<StaticKey> {
        let path = self.dir.join(KEY_FILE);
        let text = tasuki_shell::files::read_secret_file(&path)?;
        StaticKey::from_base64(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// The enrolment, if this spoke enrolled; checks the pinned key file agrees.
    pub(crate) fn enrolment(&self) -> Result<Option<Enrolment>> {
        read_enrolment(&self.dir, &self.store)
    }

    /// Records the enrolment (pinned hub key file first).
    pub(crate) fn save_enrolment(&self, e: &Enrolment) -> Result<()> {
        tasuki_shell::files::write_secret_file(
            &self.dir.join(HUB_KEY_FILE),
            e.hub_key.to_base64().as_bytes(),
        )?;
        self.store
            .commit(&[Write::put(META_TREE, *b"enrolment", e)?])
    }

    /// The configuration from the hub, if received.
    /// One written by an older version is read through its layout.
    pub(crate) fn config(&self) -> Result<Option<SpokeConfig>> {
        use tasuki_core::address_plan::{LegacySpokeConfig, SpokeConfigBeforeClusters};
        use tasuki_core::codec::from_bytes;
        let Some(bytes) = self.store.get_raw(META_TREE, b"config")? else {
            return Ok(None);
        };
        if let Ok(config) = from_bytes::<SpokeConfig>("spoke config", &bytes) {
            return Ok(Some(config));
        }
        if let Ok(config) = from_bytes::<SpokeConfigBeforeClusters>("spoke config", &bytes) {
            return Ok(Some(config.into()));
        }
        from_bytes::<LegacySpokeConfig>("spoke config", &bytes)
            .map(|c| Some(c.into()))
            .with_context(|| {
                format!(
                    "the hub's configuration in {} is damaged",
                    self.store.describe()
                )
            })
    }

    /// Stores the configuration.
    pub(crate) fn save_config(&self, c: &SpokeConfig) -> Result<()> {
        self.store.commit(&[Write::put(META_TREE, *b"config", c)?])
    }

    /// Stored epochs, oldest first.
    pub(crate) fn epochs(&self) -> Result<Vec<HeldEpoch>> {
        let mut out = Vec::new();
        for (record, lifetime) in self.store.all::<(EpochRecord, Lifetime)>(EPOCHS_TREE)? {
            match self.vault.get(&record.number.to_string())? {
                Some(key) => out.push(HeldEpoch {
                    epoch: KeyEpoch::from_record(record, key),
                    lifetime,
                }),
                None => tracing::error!(
                    epoch = record.number,
                    "the key of a stored epoch is missing from the key directory; skipping it"
                ),
            }
        }
        Ok(out)
    }

    /// The epoch that last carried traffic (0 if none).
    pub(crate) fn current(&self) -> Result<u64> {
        Ok(self.store.get(META_TREE, b"current")?.unwrap_or(0))
    }

    /// Records the epoch carrying traffic.
    pub(crate) fn save_current(&self, k: u64) -> Result<()> {
        self.store
            .commit(&[Write::put(META_TREE, *b"current", &k)?])
    }

    /// Erases every stored epoch older than `below` (flushed).
    pub(crate) fn erase_epochs_below(&self, below: u64) -> Result<Vec<u64>> {
        let gone: Vec<u64> = self
            .store
            .all::<(EpochRecord, Lifetime)>(EPOCHS_TREE)?
            .into_iter()
            .map(|(r, _)| r.number)
            .filter(|n| *n < below)
            .collect();
        let writes: Vec<Write<'_>> = gone
            .iter()
            .map(|n| Write::remove(EPOCHS_TREE, n.to_be_bytes()))
            .collect();
        // Record first, then the key (an orphan key is erased at the next start).
        self.store.commit(&writes)?;
        for n in &gone {
            self.vault.erase(&n.to_string())?;
        }
        Ok(gone)
    }

    /// Stores an epoch durably (flushed) before it is acknowledged or used.
    pub(crate) fn save_epoch(&self, h: &HeldEpoch) -> Result<()> {
        // Key first, then the record that names it.
        self.vault.put(&h.epoch.number.to_string(), &h.epoch.key)?;
        self.store.commit(&[Write::put(
            EPOCHS_TREE,
            h.epoch.number.to_be_bytes(),
            &(h.epoch.record(), h.lifetime.clone()),
        )?])
    }

    /// Every pair stored, with its epochs' keys (a key missing from the
    /// vault is left out, with an error logged).
    pub(crate) fn pairs(&self) -> Result<Vec<StoredPair>> {
        let mut out = Vec::new();
        for record in self.store.all::<PairRecord>(PAIRS_TREE)? {
            let pair = record.pair;
            let mut epochs = Vec::new();
            for r in record.epochs {
                match self.vault.get(&pair_key_name(pair, r.number))? {
                    Some(k) => epochs.push(KeyEpoch::from_record(r, k)),
                    None => {
                        tracing::error!(%pair, epoch = r.number, "a stored pair epoch's key is missing; skipping it")
                    }
                }
            }
            out.push(StoredPair {
                pair,
                peer: record.peer,
                epochs,
                current: record.current,
                rules: record.rules,
                via: record.via,
            });
        }
        Ok(out)
    }

    fn pair_record(&self, pair: PairId) -> Result<Option<PairRecord>> {
        self.store.get(PAIRS_TREE, &pair_key(pair))
    }

    /// A pair's record as stored, or a new one, with `peer` as it is now.
    fn pair_record_for(&self, pair: PairId, peer: &PairPeer) -> Result<PairRecord> {
        let mut record = self.pair_record(pair)?.unwrap_or(PairRecord {
            pair,
            peer: peer.clone(),
            current: 0,
            epochs: Vec::new(),
            rules: None,
            via: None,
        });
        record.peer = peer.clone();
        Ok(record)
    }

    /// Stores a pair epoch (key first, then the record naming it; flushed)
    /// before it is used or its receipt reported.
    pub(crate) fn save_pair_epoch(
        &self,
        pair: PairId,
        peer: &PairPeer,
        epoch: &KeyEpoch,
    ) -> Result<()> {
        self.vault
            .put(&pair_key_name(pair, epoch.number), &epoch.key)?;
        let mut record = self.pair_record_for(pair, peer)?;
        record.epochs.retain(|e| e.number != epoch.number);
        record.epochs.push(epoch.record());
        record.epochs.sort_by_key(|e| e.number);
        self.store
            .commit(&[Write::put(PAIRS_TREE, pair_key(pair), &record)?])
    }

    /// Stores a pair keyed by a group (its peer and group; flushed).
    pub(crate) fn save_pair_via(&self, pair: PairId, peer: &PairPeer, group: &str) -> Result<()> {
        let mut record = self.pair_record_for(pair, peer)?;
        record.via = Some(group.to_owned());
        self.store
            .commit(&[Write::put(PAIRS_TREE, pair_key(pair), &record)?])
    }

    /// Records the pair epoch new handshakes use (flushed).
    pub(crate) fn save_pair_current(&self, pair: PairId, epoch: u64) -> Result<()> {
        let mut record = self
            .pair_record(pair)?
            .with_context(|| format!("pair {pair} is not stored"))?;
        record.current = epoch;
        self.store
            .commit(&[Write::put(PAIRS_TREE, pair_key(pair), &record)?])
    }

    /// Records the access rules of a pair held here.
    pub(crate) fn save_pair_rules(&self, pair: PairId, rules: &PairRules) -> Result<()> {
        let Some(mut record) = self.pair_record(pair)? else {
            return Ok(());
        };
        record.rules = Some(rules.clone());
        self.store
            .commit(&[Write::put(PAIRS_TREE, pair_key(pair), &record)?])
    }

    /// Erases some of a pair's epochs: the record first, then the keys.
    pub(crate) fn erase_pair_epochs(&self, pair: PairId, epochs: &[u64]) -> Result<()> {
        if let Some(mut record) = self.pair_record(pair)? {
            record.epochs.retain(|e| !epochs.contains(&e.number));
            self.store
                .commit(&[Write::put(PAIRS_TREE, pair_key(pair), &record)?])?;
        }
        for n in epochs {
            self.vault.erase(&pair_key_name(pair, *n))?;
        }
        Ok(())
    }

    /// Erases everything stored for a pair.
    pub(crate) fn forget_pair(&self, pair: PairId) -> Result<()> {
        let Some(record) = self.pair_record(pair)? else {
            return Ok(());
        };
        self.store
            .commit(&[Write::remove(PAIRS_TREE, pair_key(pair))])?;
        for e in record.epochs {
            self.vault.erase(&pair_key_name(pair, e.number))?;
        }
        Ok(())
    }

    /// Erases every pair (the spoke was revoked).
    pub(crate) fn forget_pairs(&self) -> Result<()> {
        for p in self.pairs()? {
            self.forget_pair(p.pair)?;
        }
        Ok(())
    }

    /// Every keyed group stored, with its epochs' keys (a key missing from
    /// the vault is left out, with an error logged).
    pub(crate) fn groups(&self) -> Result<Vec<StoredGroup>> {
        let mut out = Vec::new();
        for record in self.store.all::<GroupRecord>(GROUPS_TREE)? {
            let mut epochs = Vec::new();
            for r in record.epochs {
                match self.vault.get(&group_key_name(&record.group, r.number))? {
                    Some(k) => epochs.push(KeyEpoch::from_record(r, k)),
                    None => {
                        tracing::error!(group = %record.group, epoch = r.number, "a stored group epoch's key is missing; skipping it")
                    }
                }
            }
            out.push(StoredGroup {
                group: record.group,
                epochs,
                current: record.current,
            });
        }
        Ok(out)
    }

    fn group_record(&self, group: &str) -> Result<Option<GroupRecord>> {
        self.store.get(GROUPS_TREE, group.as_bytes())
    }

    fn put_group_record(&self, record: &GroupRecord) -> Result<()> {
        self.store.commit(&[Write::put(
            GROUPS_TREE,
            record.group.as_bytes().to_vec(),
            record,
        )?])
    }

    /// Stores a group epoch (key first, then the record naming it;
    /// flushed) before its receipt is reported.
    pub(crate) fn save_group_epoch(&self, group: &str, epoch: &KeyEpoch) -> Result<()> {
        self.vault
            .put(&group_key_name(group, epoch.number), &epoch.key)?;
        let mut record = self.group_record(group)?.unwrap_or(GroupRecord {
            group: group.to_owned(),
            current: 0,
            epochs: Vec::new(),
        });
        record.epochs.retain(|e| e.number != epoch.number);
        record.epochs.push(epoch.record());
        record.epochs.sort_by_key(|e| e.number);
        self.put_group_record(&record)
    }

    /// Records the group epoch in use (flushed).
    pub(crate) fn save_group_current(&self, group: &str, epoch: u64) -> Result<()> {
        let mut record = self
            .group_record(group)?
            .with_context(|| format!("group {group} is not stored"))?;
        record.current = epoch;
        self.put_group_record(&record)
    }

    /// Erases some of a group's epochs: the record first, then the keys.
    pub(crate) fn erase_group_epochs(&self, group: &str, epochs: &[u64]) -> Result<()> {
        if let Some(mut record) = self.group_record(group)? {
            record.epochs.retain(|e| !epochs.contains(&e.number));
            self.put_group_record(&record)?;
        }
        for n in epochs {
            self.vault.erase(&group_key_name(group, *n))?;
        }
        Ok(())
    }

    /// Erases everything stored for a group (no member any more, or it
    /// is no longer keyed).
    pub(crate) fn forget_group(&self, group: &str) -> Result<()> {
        let Some(record) = self.group_record(group)? else {
            return Ok(());
        };
        self.store
            .commit(&[Write::remove(GROUPS_TREE, group.as_bytes().to_vec())])?;
        for e in record.epochs {
            self.vault.erase(&group_key_name(group, e.number))?;
        }
        Ok(())
    }

    /// Erases every group (the spoke was revoked).
    pub(crate) fn forget_groups(&self) -> Result<()> {
        for g in self.groups()? {
            self.forget_group(&g.group)?;
        }
        Ok(())
    }
}
