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

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use etcd_client::{Client, GetOptions};
use tasuki_core::keys::SecretKey;
use zeroize::Zeroizing;

use super::etcd_members::{CallError, Members, ATTEMPT_TIMEOUT};
pub use super::etcd_settings::{EtcdSettings, CALL_TIMEOUT};

mod commit;

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

    /// The `revision` record: the revision of the last commit and the id
    /// that commit wrote there (0 and nothing before the first).
    fn revision_record(&self) -> Result<(i64, Vec<u8>)> {
        let key = self.key("revision");
        let resp = self.call("cannot read the store's revision", move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(resp.kvs().first().map_or((0, Vec::new()), |kv| {
            (kv.mod_revision(), kv.value().to_vec())
        }))
    }

    fn read_revision(&self) -> Result<i64> {
        Ok(self.revision_record()?.0)
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
}
