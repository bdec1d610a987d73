//! The replicated store engine: etcd (v3 API), shared by the hub processes
//! of one cluster.
//!
//! Layout under the cluster's prefix (default `/tasuki/`):
//! `d/TREE \0 KEY` holds a record, `revision` the last commit's writer and
//! `leader` the active hub's election record (see the hub's `cluster`
//! module). Every value is sealed under the cluster's storage key
//! ([`tasuki_core::store_seal`]) with its etcd key as associated data.
//!
//! Fencing: a commit is one etcd transaction that compares the `revision`
//! record's revision with the one this process last wrote or read, and,
//! once this process leads, the `leader` record with its own token. A
//! commit based on a state another hub has changed since, or sent by a hub
//! that no longer leads, is refused by etcd itself, and the store refuses
//! every later commit of this process: its memory is stale.
//!
//! The engine is called from plain (not async) code, on a tokio worker or
//! not: each call runs on the engine's own small runtime and is waited for
//! with a deadline, so a cluster without quorum makes a commit fail with a
//! clear error instead of hanging the hub.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use rand_core::RngCore;
use tasuki_core::keys::SecretKey;
use zeroize::Zeroizing;

use super::etcd_members::{CallError, Members, ATTEMPT_TIMEOUT};
pub use super::etcd_settings::{EtcdSettings, CALL_TIMEOUT};
use super::Write;

/// How often a commit known not to have applied is sent.
const COMMIT_TRIES: u32 = 3;

/// Records read per request when a tree is scanned (etcd answers at most a
/// few MiB at once).
const PAGE: i64 = 500;

/// What a commit compares, and whether this process may commit at all.
struct Fence {
    /// The `revision` record's revision as this process last wrote or read it.
    revision: i64,
    /// This process's election token, once it leads.
    leader: Option<Vec<u8>>,
    /// Why commits are refused for good (another hub changed the store).
    fenced: Option<String>,
    /// A commit reported failed whose transaction may still be applied
    /// (its answer was lost): its id in the revision record, and why. The
    /// next commit looks first; one that landed after all fences the store.
    pending: Option<(Vec<u8>, String)>,
    /// Asked before each commit: why it must not be sent now (the hub's
    /// lease is not known to be alive), if so.
    gate: Option<Gate>,
}

/// What became of a commit whose answer was lost.
enum Outcome {
    NotApplied,
    /// Applied, at this revision.
    Applied(i64),
    /// Another hub wrote since.
    Other,
}

/// See [`EtcdStore::gate_with`].
pub type Gate = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The etcd engine of a [`super::Store`].
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    members: Members,
    settings: EtcdSettings,
    storage_key: SecretKey,
    fence: Mutex<Fence>,
    /// [`Fence::fenced`], readable while a commit holds the fence.
    fenced_for_good: std::sync::OnceLock<String>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropped from async code too: never block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `runtime` and waits for it, at most `limit`.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    (what, limit): (&str, Duration),
    settings: &EtcdSettings,
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let outcome = tokio::time::timeout(limit, fut).await;
        // The waiter is gone only when the whole engine is being dropped.
        if tx.send(outcome).is_err() {
            tracing::debug!("an etcd answer came after its caller had left");
        }
    });
    match rx.recv() {
        Ok(Ok(result)) => result.with_context(|| format!("{what} ({})", settings.describe())),
        Ok(Err(_)) => Err(anyhow!(
            "{what}: {} did not answer within {}s (unreachable, or without quorum)",
            settings.describe(),
            limit.as_secs()
        )),
        Err(_) => Err(anyhow!("{what}: the etcd client stopped")),
    }
}

impl EtcdStore {
    /// Connects and reads the last commit's revision.
    pub(super) fn open(settings: &EtcdSettings, storage_key: SecretKey) -> Result<Self> {
        settings.check()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tasuki-etcd")
            .enable_all()
            .build()
            .context("cannot start the etcd client's runtime")?;
        let s = settings.clone();
        let members = match wait(
            &runtime,
            ("cannot connect", CALL_TIMEOUT),
            settings,
            async move { Members::connect(&s).await },
        ) {
            Ok(m) => m,
            Err(e) => {
                // Called from async code too: never dropped blocking there.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let store = Self {
            runtime: Some(runtime),
            members,
            settings: settings.clone(),
            storage_key,
            fence: Mutex::new(Fence {
                revision: 0,
                leader: None,
                fenced: None,
                pending: None,
                gate: None,
            }),
            fenced_for_good: std::sync::OnceLock::new(),
        };
        let revision = store.read_revision()?;
        store.lock_fence().revision = revision;
        Ok(store)
    }

    fn lock_fence(&self) -> std::sync::MutexGuard<'_, Fence> {
        self.fence.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read (or an idempotent write), on each member in turn if need be.
    fn call<T: Send + 'static, F>(
        &self,
        what: &str,
        f: impl Fn(Client) -> F + Send + Sync + 'static,
    ) -> Result<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.attempt(what, false, f)?
            .map_err(|e| anyhow::Error::new(e).context(what.to_owned()))
    }

    /// Runs `f` on the members (see [`Members::run`]); the outer error is
    /// the runtime's, the inner one says whether a write may have applied.
    fn attempt<T: Send + 'static, F>(
        &self,
        what: &str,
        write: bool,
        f: impl Fn(Client) -> F + Send + Sync + 'static,
    ) -> Result<Result<T, CallError>>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .context("the etcd client is stopping")?;
        let members = self.members.clone();
        let n = u32::try_from(self.settings.etcd_endpoints.len()).unwrap_or(u32::MAX);
        let limit = ATTEMPT_TIMEOUT.saturating_mul(n) + Duration::from_secs(1);
        wait(runtime, (what, limit), &self.settings, async move {
            Ok(members.run(write, f).await)
        })
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.settings.etcd_prefix).into_bytes()
    }

    fn record_key(&self, tree: &str, key: &[u8]) -> Vec<u8> {
        let mut k = self.key("d/");
        k.extend_from_slice(tree.as_bytes());
        k.push(0);
        k.extend_from_slice(key);
        k
    }

    /// The etcd key of the active hub's election record.
    pub fn leader_key(&self) -> Vec<u8> {
        self.key("leader")
    }

    /// The etcd key of a running hub's presence record (bound to its
    /// lease: it vanishes with the process).
    pub fn presence_key(&self, endpoint: &str) -> Vec<u8> {
        self.key(&format!("alive/{endpoint}"))
    }

    /// The settings this engine was opened with.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    fn read_revision(&self) -> Result<i64> {
        let key = self.key("revision");
        let resp = self.call("cannot read the store's revision", move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }

    /// This process now leads with `token` (its election record holds it):
    /// every later commit compares it, and is based on the store as it is
    /// now (read again: the previous leader may have written since this
    /// process opened the store).
    pub fn lead_with(&self, token: Vec<u8>) -> Result<()> {
        let revision = self.read_revision()?;
        let mut fence = self.lock_fence();
        fence.revision = revision;
        fence.leader = Some(token);
        Ok(())
    }

    /// Records `endpoint` as a member of the cluster (a plain record
    /// beside the fenced ones: members join while another hub is active).
    pub fn add_member(&self, endpoint: &str) -> Result<()> {
        let key = self.member_key(endpoint);
        let value = endpoint.as_bytes().to_vec();
        self.call("cannot record the member", move |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })?;
        Ok(())
    }

    fn member_key(&self, endpoint: &str) -> Vec<u8> {
        self.key(&format!("members/{endpoint}"))
    }

    /// Every member's endpoint, in the order they joined.
    pub fn members(&self) -> Result<Vec<String>> {
        let prefix = self.key("members/");
        let resp = self.call("cannot read the cluster's members", move |mut c| {
            let prefix = prefix.clone();
            async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_sort(
                        etcd_client::SortTarget::Create,
                        etcd_client::SortOrder::Ascend,
                    )),
                )
                .await
            }
        })?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect())
    }

    /// Whether anything was ever committed under the prefix (a cluster is
    /// there already).
    pub fn holds_records(&self) -> bool {
        self.lock_fence().revision != 0
    }

    /// Makes every commit ask `gate` first and fail at once with its
    /// answer, if any: a hub whose lease may have lapsed refuses changes
    /// without waiting for etcd (the transaction's compare would refuse
    /// them anyway, once etcd answers).
    pub fn gate_with(&self, gate: Gate) {
        self.lock_fence().gate = Some(gate);
    }

    /// The revision of the last commit, as etcd has it now.
    pub fn last_revision(&self) -> Result<i64> {
        self.read_revision()
    }

    /// Drops etcd's history before `revision`: removed records (erased
    /// keys, sealed as they were) leave etcd's database, and it stops
    /// growing with every rotation.
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.call("cannot compact etcd's history", move |mut c| async move {
            c.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        })?;
        Ok(())
    }

    /// Why commits are refused for good, if they are.
    /// Read without waiting for a commit in flight (the lease keeper asks).
    pub fn fenced(&self) -> Option<String> {
        self.fenced_for_good.get().cloned()
    }

    fn open_value(&self, key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        tasuki_core::store_seal::open(&self.storage_key, key, sealed).with_context(|| {
            format!(
                "the record {} in {} does not open: {}",
                String::from_utf8_lossy(key).replace('\0', "/"),
                self.settings.describe(),
                "restore it from an etcd backup, or check that this hub's cluster key is the \
                 cluster's"
            )
        })
    }

    pub(super) fn get_raw(&self, tree: &str, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let full = self.record_key(tree, key);
        let k = full.clone();
        let resp = self.call("cannot read the store", move |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })?;
        resp.kvs()
            .first()
            .map(|kv| self.open_value(&full, kv.value()))
            .transpose()
    }

    pub(super) fn scan_raw(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = self.record_key(tree, b"");
        let mut end = prefix.clone();
        // The tree's records end where its name's terminator does.
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let mut from = prefix.clone();
        let mut out = Vec::new();
        loop {
            let (start, stop) = (from.clone(), end.clone());
            let resp = self.call("cannot read the store", move |mut c| {
                let (start, stop) = (start.clone(), stop.clone());
                async move {
                    c.get(
                        start,
                        Some(GetOptions::new().with_range(stop).with_limit(PAGE)),
                    )
                    .await
                }
            })?;
            for kv in resp.kvs() {
                let value = self.open_value(kv.key(), kv.value())?;
                out.push((kv.key()[prefix.len()..].to_vec(), value.to_vec()));
            }
            match resp.kvs().last() {
                Some(kv) if resp.more() => {
                    from = kv.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("the store in {}", self.settings.describe())
    }

    /// What became of the commit `id`, whose answer was lost: it applied
    /// if the revision record holds its id (each commit writes its own), it
    /// has not (yet) if the record is where it was; else another writer's
    /// commit is there.
    fn outcome(&self, fence: &Fence, id: &[u8]) -> Result<Outcome> {
        let key = self.key("revision");
        let resp = self.call("cannot read the store's revision", move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        let (revision, value) = resp
            .kvs()
            .first()
            .map_or((0, &[][..]), |kv| (kv.mod_revision(), kv.value()));
        Ok(if revision == fence.revision {
            Outcome::NotApplied
        } else if value == id {
            Outcome::Applied(revision)
        } else {
            Outcome::Other
        })
    }

    /// A commit whose answer was lost (`lost`): settled now if etcd can be
    /// asked, else every later commit asks first (and is refused until
    /// etcd answers). A lost commit that did apply leaves memory behind the
    /// store only if the caller undid it: it is taken as done.
    /// True: it applied; false: it did not (it may be sent again).
    fn settle(&self, fence: &mut Fence, id: &[u8], lost: &anyhow::Error) -> Result<bool> {
        match self.outcome(fence, id) {
            Ok(Outcome::NotApplied) => {
                tracing::warn!(error = %format!("{lost:#}"), "a commit was not applied");
                Ok(false)
            }
            Ok(Outcome::Applied(revision)) => {
                tracing::info!(revision, "a commit whose answer was lost had been applied");
                fence.revision = revision;
                Ok(true)
            }
            Ok(Outcome::Other) => self.fence_out(fence).map(|()| false),
            Err(e) => {
                let why = format!(
                    "a commit's outcome is unknown ({lost:#}) and etcd cannot be asked ({e:#}): \
                     changes are refused until etcd answers"
                );
                tracing::error!(%why, "store write unsettled");
                fence.pending = Some((id.to_vec(), why.clone()));
                bail!("{why}");
            }
        }
    }

    /// Before a commit after an unsettled one: what became of it. One that
    /// applied after all was reported as failed, so memory lags the store
    /// and the hub must read it anew.
    fn settle_earlier(&self, fence: &mut Fence) -> Result<()> {
        let Some((id, why)) = fence.pending.clone() else {
            return Ok(());
        };
        match self.outcome(fence, &id) {
            // Should it land later still, the next commit's compare fails
            // and shows it (see `commit`).
            Ok(Outcome::NotApplied) => {
                tracing::info!("the commit reported failed has not been applied");
                fence.pending = None;
                Ok(())
            }
            Ok(Outcome::Applied(_) | Outcome::Other) => self.fence_out(fence),
            Err(e) => Err(e.context(why)),
        }
    }

    /// Another hub wrote: this process's memory is stale for good.
    fn fence_out(&self, fence: &mut Fence) -> Result<()> {
        let why = format!(
            "{} was changed by another hub since this one read it (or this hub no longer holds \
             the leader record): this hub stops committing, its state is stale — it must restart \
             to follow the active hub",
            self.describe()
        );
        tracing::error!(%why, "commit refused by the store's fencing");
        fence.fenced = Some(why.clone());
        if self.fenced_for_good.set(why.clone()).is_err() {
            tracing::debug!("the store was fenced already");
        }
        bail!("{why}")
    }

    pub(super) fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
        let mut fence = self.lock_fence();
        if let Some(why) = &fence.fenced {
            bail!("{why}");
        }
        if let Some(why) = fence.gate.as_ref().and_then(|g| g()) {
            bail!("{why}");
        }
        self.settle_earlier(&mut fence)?;
        // This commit's own id in the revision record: whoever reads it
        // there knows which commit landed (the leader token, and a nonce).
        let mut id = fence.leader.clone().unwrap_or_else(|| b"init".to_vec());
        let mut nonce = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut nonce);
        id.push(b' ');
        id.extend(nonce.iter().flat_map(|b| format!("{b:02x}").into_bytes()));
        // One operation per key (etcd refuses a key twice in a transaction).
        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for w in writes {
            match w {
                Write::Put { tree, key, value } => {
                    let full = self.record_key(tree, key);
                    let mut nonce = [0u8; tasuki_core::store_seal::NONCE_LEN];
                    rand_core::OsRng.fill_bytes(&mut nonce);
                    let sealed =
                        tasuki_core::store_seal::seal(&self.storage_key, &full, value, nonce);
                    last.insert(full, Some(sealed));
                }
                Write::Remove { tree, key } => {
                    last.insert(self.record_key(tree, key), None);
                }
            }
        }
        let mut ops: Vec<TxnOp> = last
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            })
            .collect();
        let revision_key = self.key("revision");
        ops.push(TxnOp::put(revision_key.clone(), id.clone(), None));
        let mut compares = vec![Compare::mod_revision(
            revision_key.clone(),
            CompareOp::Equal,
            fence.revision,
        )];
        if let Some(token) = &fence.leader {
            compares.push(Compare::value(
                self.leader_key(),
                CompareOp::Equal,
                token.clone(),
            ));
        }
        // Refused: the revision record says whether an earlier try of this
        // same commit landed meanwhile.
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else([TxnOp::get(revision_key, None)]);
        // A commit known not to have applied (its answer lost, then etcd
        // asked) is sent again, a few times: a raft election among the etcd
        // members holds requests for a moment.
        let mut tries = 0;
        let resp = loop {
            tries += 1;
            let sent = txn.clone();
            let outcome = self.attempt("cannot commit to the store", true, move |mut c| {
                let txn = sent.clone();
                async move { c.txn(txn).await }
            });
            let lost = match outcome {
                Ok(Ok(r)) => break r,
                Ok(Err(e)) if !e.ambiguous => {
                    let e = anyhow::Error::new(e).context(format!(
                        "cannot commit to {}; nothing of it was kept",
                        self.describe()
                    ));
                    tracing::error!(error = %format!("{e:#}"), "store write failed");
                    return Err(e);
                }
                // Maybe applied, its answer lost: etcd is asked what became of it.
                Ok(Err(e)) => anyhow::Error::new(e),
                Err(e) => e,
            };
            if self.settle(&mut fence, &id, &lost)? {
                return Ok(());
            }
            // Not again once the hub's lease is in doubt (the gate).
            let gated = fence.gate.as_ref().and_then(|g| g());
            if tries >= COMMIT_TRIES || gated.is_some() {
                tracing::error!(error = %format!("{lost:#}"), "store write failed; nothing of it was kept");
                // Its transaction may still be queued in etcd: looked for
                // before the next commit.
                fence.pending = Some((id, format!("{lost:#}")));
                return Err(lost.context("nothing of the commit was kept"));
            }
        };
        if resp.succeeded() {
            fence.revision = resp
                .header()
                .map(|h| h.revision())
                .context("etcd answered a commit without a revision")?;
            return Ok(());
        }
        let landed = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .filter(|kv| kv.value() == id.as_slice())
                .map(|kv| kv.mod_revision()),
            _ => None,
        });
        if let Some(revision) = landed {
            tracing::info!(revision, "an earlier try of this commit had landed");
            fence.revision = revision;
            return Ok(());
        }
        self.fence_out(&mut fence)
    }
}
