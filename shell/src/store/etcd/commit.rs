//! Committing to etcd: one fenced transaction per commit, the commit's own
//! id in the revision record, and what is done when an answer is lost
//! (see the parent module's docs).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand_core::RngCore;

use super::{EtcdStore, Fence};
use crate::store::Write;

/// How often a commit known not to have applied is sent.
const COMMIT_TRIES: u32 = 3;

/// What became of a commit whose answer was lost.
enum Outcome {
    NotApplied,
    /// Applied, at this revision.
    Applied(i64),
    /// Another hub wrote since.
    Other,
}

impl EtcdStore {
    /// What became of the commit `id`, whose answer was lost: it applied
    /// if the revision record holds its id (each commit writes its own), it
    /// has not (yet) if the record is where it was; else another writer's
    /// commit is there.
    fn outcome(&self, fence: &Fence, id: &[u8]) -> Result<Outcome> {
        let (revision, value) = self.revision_record()?;
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

    pub(in crate::store) fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
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
