//! One writer batch: the changes of every command the writer applies
//! together, visible to the later commands of the same batch before they
//! reach sled, then committed to all trees in one sled transaction.
//!
//! It owns the overlay of uncommitted values and the commit; it knows no
//! command and no record type beyond "JSON in, JSON out".

use super::{StoreError, Trees, decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use std::collections::BTreeMap;

/// Which tree a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TreeId {
    /// Live code per phone number.
    Codes,
    /// Request records by request id.
    Requests,
    /// Request id by carrier message id.
    ByMessage,
    /// Send histories, failure counts, prefix statistics, quarantines.
    Limits,
}

/// One change of a batch: `value` `None` removes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The tree.
    pub tree: TreeId,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` for a removal.
    pub value: Option<Vec<u8>>,
}

type Overlay = BTreeMap<(TreeId, Vec<u8>), Option<Vec<u8>>>;

/// The uncommitted changes of one batch. A command's own changes are staged
/// and join the batch only when the command succeeds ([`Batch::keep`]), so a
/// command that fails half-way leaves nothing behind.
pub struct Batch<'a> {
    trees: &'a Trees,
    pending: Overlay,
    staged: Overlay,
    writes: usize,
}

impl<'a> Batch<'a> {
    /// An empty batch over `trees`.
    pub fn new(trees: &'a Trees) -> Self {
        Self { trees, pending: Overlay::new(), staged: Overlay::new(), writes: 0 }
    }

    /// The current value of `key`: this batch's, else sled's.
    pub fn get_raw(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = (tree, key.to_vec());
        if let Some(v) = self.staged.get(&k).or_else(|| self.pending.get(&k)) {
            return Ok(v.clone());
        }
        Ok(self.trees.get(tree).get(key)?.map(|v| v.to_vec()))
    }

    /// The current value of `key`, decoded.
    pub fn get<T: DeserializeOwned>(&self, tree: TreeId, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get_raw(tree, key)?.map(|bytes| decode(key, &bytes)).transpose()
    }

    /// The keys sled holds in `tree` after `after` (all with `None`), in
    /// order; this batch's own additions are not among them (read each key's
    /// current value with [`Batch::get`]).
    pub fn sled_keys(
        &self,
        tree: TreeId,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<sled::IVec, StoreError>> + use<> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        self.trees.get(tree).range::<Vec<u8>, _>((start, Bound::Unbounded)).keys().map(|k| k.map_err(StoreError::from))
    }

    /// Stages `value` under `key`.
    pub fn put<T: Serialize>(&mut self, tree: TreeId, key: &[u8], value: &T) {
        self.staged.insert((tree, key.to_vec()), Some(encode(value)));
    }

    /// Stages raw bytes under `key`.
    pub fn put_raw(&mut self, tree: TreeId, key: &[u8], value: &[u8]) {
        self.staged.insert((tree, key.to_vec()), Some(value.to_vec()));
    }

    /// Stages the removal of `key`.
    pub fn remove(&mut self, tree: TreeId, key: &[u8]) {
        self.staged.insert((tree, key.to_vec()), None);
    }

    /// The staged changes of the current command join the batch.
    pub fn keep(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        self.writes += staged.len();
        self.pending.extend(staged);
    }

    /// How many writes commands have kept in this batch so far (a key
    /// written twice counts twice).
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// The staged changes of the current command are dropped.
    pub fn drop_staged(&mut self) {
        self.staged.clear();
    }

    /// Writes every kept change to sled in one transaction across the trees
    /// (all or nothing after a crash) and returns them as one ordered list.
    pub fn commit(&mut self) -> Result<Vec<Change>, StoreError> {
        self.staged.clear();
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let t = self.trees;
        (&t.codes, &t.requests, &t.by_message, &t.limits)
            .transaction(|(codes, requests, by_message, limits)| {
                for ((tree, key), value) in &pending {
                    let tree = match tree {
                        TreeId::Codes => codes,
                        TreeId::Requests => requests,
                        TreeId::ByMessage => by_message,
                        TreeId::Limits => limits,
                    };
                    match value {
                        Some(v) => tree.insert(key.as_slice(), v.as_slice())?,
                        None => tree.remove(key.as_slice())?,
                    };
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(e) => e,
                sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
            })?;
        Ok(pending.into_iter().map(|((tree, key), value)| Change { tree, key, value }).collect())
    }
}
