//! Storing a pair's or a keyed group's new epoch: its key in the vault
//! first, then its record and the scope's meta in one flushed commit,
//! before anything about it is sent; when the commit fails the key file is
//! erased again.

use tasuki_core::keys::KeyEpoch;
use tasuki_shell::store::Write;

use super::*;

/// Where a scope's records go: the trees and keys of its epoch records
/// and of its meta.
pub(super) struct ScopeRecords<'a> {
    /// The tree of epoch records.
    pub(super) epochs_tree: &'static str,
    /// An epoch's key in it, by number.
    pub(super) epoch_key: &'a dyn Fn(u64) -> Vec<u8>,
    /// The vault name of an epoch's key, by number.
    pub(super) vault_name: &'a dyn Fn(u64) -> String,
    /// The meta's write (tree, key and value).
    pub(super) meta: Write<'a>,
    /// What it is, for an error's context.
    pub(super) what: String,
}

impl HubState {
    /// Stores `issued` (if any, with `record` as its epoch record) and the
    /// meta of `at`.
    pub(super) fn commit_scope_issue<R: serde::Serialize>(
        &self,
        at: ScopeRecords<'_>,
        issued: Option<(&KeyEpoch, R)>,
    ) -> Result<()> {
        let mut writes = Vec::with_capacity(2);
        let number = issued.as_ref().map(|(e, _)| e.number);
        if let Some((epoch, record)) = &issued {
            self.vault.put(&(at.vault_name)(epoch.number), &epoch.key)?;
            writes.push(Write::put(
                at.epochs_tree,
                (at.epoch_key)(epoch.number),
                record,
            )?);
        }
        writes.push(at.meta);
        if let Err(e) = self.store.commit(&writes) {
            if let Some(k) = number {
                let name = (at.vault_name)(k);
                if let Err(e) = self.vault.erase(&name) {
                    tracing::error!(key = name, error = %format!("{e:#}"), "cannot erase a key file; the next start erases it");
                }
            }
            return Err(StateError::from(e).context(format!("{}'s new epoch", at.what)));
        }
        Ok(())
    }
}
