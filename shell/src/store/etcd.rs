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
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use rand_core::RngCore;
use tasuki_core::keys::SecretKey;
use zeroize::Zeroizing;

use super::Write;

/// How long one etcd call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Records read per request when a tree is scanned (etcd answers at most a
/// few MiB at once).
const PAGE: i64 = 500;

/// Where a hub's etcd cluster is and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Client URLs of the etcd members (`http://10.0.0.1:2379`, or
    /// `https://…` with the TLS settings below).
    pub etcd_endpoints: Vec<String>,
    /// The key prefix of this hub cluster's records (several clusters can
    /// share one etcd).
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// PEM file of the CA that signed the etcd servers' certificates.
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd.
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
}

fn default_prefix() -> String {
    "/tasuki/".into()
}

impl EtcdSettings {
    /// Settings for `endpoints` with the default prefix and no TLS.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            etcd_endpoints: endpoints,
            etcd_prefix: default_prefix(),
            ..Self::default()
        }
    }

    /// Checks what can be checked without connecting.
    pub fn check(&self) -> Result<()> {
        if self.etcd_endpoints.is_empty() {
            bail!("no etcd endpoints given (--etcd-endpoints http://HOST:2379,...)");
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("etcd endpoint {e:?} must start with http:// or https://");
            }
        }
        if !self.etcd_prefix.starts_with('/') || !self.etcd_prefix.ends_with('/') {
            bail!(
                "etcd prefix {:?} must start and end with '/'",
                self.etcd_prefix
            );
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            bail!("a client certificate needs both etcd_cert and etcd_key");
        }
        Ok(())
    }

    /// The endpoints, for messages.
    pub fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {})",
            self.etcd_endpoints.join(","),
            self.etcd_prefix
        )
    }

    /// Connects (from async code: the hub's election uses its own client).
    pub async fn connect(&self) -> Result<Client> {
        self.check()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.etcd_ca {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read the etcd CA {}", ca.display()))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                let cert_pem = std::fs::read(cert).with_context(|| {
                    format!("cannot read the etcd client certificate {}", cert.display())
                })?;
                let key_pem = Zeroizing::new(std::fs::read(key).with_context(|| {
                    format!("cannot read the etcd client key {}", key.display())
                })?);
                tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, &*key_pem));
            }
            options = options.with_tls(tls);
        }
        Client::connect(&self.etcd_endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to {}", self.describe()))
    }
}

/// What a commit compares, and whether this process may commit at all.
struct Fence {
    /// The `revision` record's revision as this process last wrote or read it.
    revision: i64,
    /// This process's election token, once it leads.
    leader: Option<Vec<u8>>,
    /// Why commits are refused for good (another hub changed the store).
    fenced: Option<String>,
    /// Asked before each commit: why it must not be sent now (the hub's
    /// lease is not known to be alive), if so.
    gate: Option<Gate>,
}

/// See [`EtcdStore::gate_with`].
pub type Gate = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The etcd engine of a [`super::Store`].
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    settings: EtcdSettings,
    storage_key: SecretKey,
    fence: Mutex<Fence>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropped from async code too: never block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `runtime` and waits for it, at most [`CALL_TIMEOUT`].
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    what: &str,
    settings: &EtcdSettings,
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let outcome = tokio::time::timeout(CALL_TIMEOUT, fut).await;
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
            CALL_TIMEOUT.as_secs()
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
        let client = wait(&runtime, "cannot connect", settings, async move {
            s.connect().await
        })?;
        let store = Self {
            runtime: Some(runtime),
            client,
            settings: settings.clone(),
            storage_key,
            fence: Mutex::new(Fence {
                revision: 0,
                leader: None,
                fenced: None,
                gate: None,
            }),
        };
        let revision = store.read_revision()?;
        store.lock_fence().revision = revision;
        Ok(store)
    }

    fn lock_fence(&self) -> std::sync::MutexGuard<'_, Fence> {
        self.fence.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn call<T: Send + 'static, F>(&self, what: &str, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .context("the etcd client is stopping")?;
        let fut = f(self.client.clone());
        wait(runtime, what, &self.settings, async move {
            fut.await.map_err(anyhow::Error::new)
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

    /// The settings this engine was opened with.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    fn read_revision(&self) -> Result<i64> {
        let key = self.key("revision");
        let resp = self.call("cannot read the store's revision", |mut c| async move {
            c.get(key, None).await
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
        self.call("cannot record the member", |mut c| async move {
            c.put(key, value, None).await
        })?;
        Ok(())
    }

    fn member_key(&self, endpoint: &str) -> Vec<u8> {
        self.key(&format!("members/{endpoint}"))
    }

    /// Every member's endpoint, in the order they joined.
    pub fn members(&self) -> Result<Vec<String>> {
        let prefix = self.key("members/");
        let resp = self.call("cannot read the cluster's members", |mut c| async move {
            c.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_sort(
                    etcd_client::SortTarget::Create,
                    etcd_client::SortOrder::Ascend,
                )),
            )
            .await
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

    /// Why commits are refused for good, if they are.
    pub fn fenced(&self) -> Option<String> {
        self.lock_fence().fenced.clone()
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
        let resp = self.call("cannot read the store", |mut c| async move {
            c.get(k, None).await
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
            let resp = self.call("cannot read the store", |mut c| async move {
                c.get(
                    start,
                    Some(GetOptions::new().with_range(stop).with_limit(PAGE)),
                )
                .await
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

    pub(super) fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
        let mut fence = self.lock_fence();
        if let Some(why) = &fence.fenced {
            bail!("{why}");
        }
        if let Some(why) = fence.gate.as_ref().and_then(|g| g()) {
            bail!("{why}");
        }
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
        let writer = fence.leader.clone().unwrap_or_else(|| b"init".to_vec());
        ops.push(TxnOp::put(revision_key.clone(), writer, None));
        let mut compares = vec![Compare::mod_revision(
            revision_key,
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
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = match self.call("cannot commit to the store", |mut c| async move {
            c.txn(txn).await
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "store write failed; nothing of it was kept");
                return Err(e);
            }
        };
        if resp.succeeded() {
            fence.revision = resp
                .header()
                .map(|h| h.revision())
                .context("etcd answered a commit without a revision")?;
            return Ok(());
        }
        let why = format!(
            "{} was changed by another hub since this one read it (or this hub no longer holds \
             the leader record): this hub stops committing, its state is stale — it must restart \
             to follow the active hub",
            self.describe()
        );
        tracing::error!(%why, "commit refused by the store's fencing");
        fence.fenced = Some(why.clone());
        bail!("{why}")
    }
}
