//! The collection index in RocksDB.
//!
//! Column families:
//! - `pairs`: `collection \0 did` for every *listed* pair (active accounts only), so a
//!   `listReposByCollection` page is one forward range scan in DID order;
//! - `repos`: `did \0 collection` for every pair known, listed or not: what a DID's repo
//!   holds, used to hide and restore its pairs when its status changes and to drop them all;
//! - `inactive`: `did` → status, for accounts that are not active (not listed);
//! - `counts`: `collection` → listed DIDs (little-endian i64, kept by a merge operator);
//! - `pending`: `did \0 collection` imported by a backfill and not yet verified;
//! - `meta`: the live indexer's checkpoint (relay seq) and other small values.
//!
//! Every change is idempotent (add if absent, remove if present), so replaying events after
//! a crash converges; writes are serialised by one lock because they read before writing.

use crate::cache::ByteLru;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, DB,
};
use std::path::Path;
use std::sync::{Mutex, RwLock};

const PAIRS: &str = "pairs";
const REPOS: &str = "repos";
const INACTIVE: &str = "inactive";
const COUNTS: &str = "counts";
const PENDING: &str = "pending";
const META: &str = "meta";
const LIVE_CHECKPOINT: &[u8] = b"live_seq";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} is missing")]
    MissingFamily(&'static str),
    #[error("{0}")]
    Io(String),
    #[error("the collection index is closed (the relay is shutting down)")]
    Closed,
}

/// Memory limits of the index (RocksDB's own caches), from the relay config.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Memory for the answers kept in front of RocksDB ([`Facts`]).
    pub fact_cache_bytes: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { block_cache_bytes: 64 << 20, write_buffer_bytes: 16 << 20, fact_cache_bytes: 16 << 20 }
    }
}

/// One change to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The repo holds at least one record in the collection.
    Add { did: String, collection: String },
    /// The repo holds no record in the collection any more.
    Remove { did: String, collection: String },
    /// The repo holds exactly these collections (describeRepo).
    Replace { did: String, collections: Vec<String> },
    /// The account became active or not; `deleted` drops everything it had.
    Status { did: String, active: bool, status: Option<String> },
}

/// The index; [`Index::close`] releases RocksDB (and its lock on the directory) while other
/// parts of the relay may still hold the `Index`, whose calls then fail with `Closed`.
pub struct Index {
    inner: RwLock<Option<Inner>>,
    /// Writes read before they write: one writer at a time.
    write: Mutex<()>,
}

struct Inner {
    db: DB,
    facts: Mutex<Facts>,
}

/// Answers RocksDB gave recently that the live indexer asks again for nearly every commit:
/// "does this repo already list this collection?" and "is this account not marked
/// inactive?". At saturation those two reads were most of the indexer's CPU. Only answers
/// read from RocksDB are kept, and every staged change that could make one untrue drops it
/// first; both happen under the index's write lock, so a kept answer is never stale.
struct Facts {
    /// Repo keys (`did \0 collection`) present in the repos family.
    listed: ByteLru<()>,
    /// DIDs absent from the inactive family.
    active: ByteLru<()>,
}

impl Facts {
    fn new(bytes: usize) -> Facts {
        Facts { listed: ByteLru::new(bytes / 2, usize::MAX), active: ByteLru::new(bytes / 2, usize::MAX) }
    }
}

/// A write batch being built, with the repo keys it already sets (`true`) or deletes.
#[derive(Default)]
struct Pending {
    batch: WriteBatch,
    repos: std::collections::HashMap<Vec<u8>, bool>,
}

fn join(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

fn split(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&key[..at]).ok()?, std::str::from_utf8(&key[at + 1..]).ok()?))
}

fn add_counts(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let decode = |bytes: &[u8]| bytes.try_into().map(i64::from_le_bytes).unwrap_or(0);
    let mut total = existing.map(decode).unwrap_or(0);
    for operand in operands {
        total += decode(operand);
    }
    Some(total.to_le_bytes().to_vec())
}

impl Inner {
    fn open(path: &Path, config: &IndexConfig) -> Result<Inner, IndexError> {
        let cache = Cache::new_lru_cache(config.block_cache_bytes)?;
        let family = |name: &str| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut options = Options::default();
            options.set_block_based_table_factory(&table);
            options.set_write_buffer_size(config.write_buffer_bytes);
            options.set_max_write_buffer_number(2);
            if name == COUNTS {
                options.set_merge_operator_associative("add_i64", add_counts);
            }
            ColumnFamilyDescriptor::new(name, options)
        };
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_open_files(512);
        // Bounds all memtables together, whatever the number of column families.
        options.set_db_write_buffer_size(config.write_buffer_bytes * 4);
        options.increase_parallelism(2);
        let families = [PAIRS, REPOS, INACTIVE, COUNTS, PENDING, META].map(family);
        let db = DB::open_cf_descriptors(&options, path, families)?;
        Ok(Inner { db, facts: Mutex::new(Facts::new(config.fact_cache_bytes)) })
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db.cf_handle(name).ok_or(IndexError::MissingFamily(name))
    }

    /// Up to `limit` listed DIDs of a collection, after `after` (exclusive), in DID order.
    fn list(&self, collection: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, IndexError> {
        let prefix = join(collection, "");
        let start = match after {
            // `did \0` sorts right after `did` and before every longer DID that extends it.
            Some(did) => {
                let mut key = join(collection, did);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        // `collection \x01` is the first key past every `collection \0 did`: the iterator stops
        // there by itself instead of reading into the next collection's blocks.
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(PAIRS)?, options);
        iter.seek(&start);
        let mut out = Vec::with_capacity(limit.min(2000));
        while out.len() < limit {
            let Some(key) = iter.key() else { break };
            out.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
            iter.next();
        }
        iter.status()?;
        Ok(out)
    }

    /// Compacts every column family (benchmarks measure a settled index with this).
    fn compact(&self) -> Result<(), IndexError> {
        for family in [PAIRS, REPOS, INACTIVE, COUNTS, PENDING, META] {
            self.db.compact_range_cf(self.cf(family)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Collections with their listed-DID counts, in name order, after `after`.
    fn collections(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, i64)>, IndexError> {
        let start = after.map(|a| format!("{a}\0")).unwrap_or_default();
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf(self.cf(COUNTS)?, IteratorMode::From(start.as_bytes(), Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if out.len() >= limit {
                break;
            }
            let count = (*value).try_into().map(i64::from_le_bytes).unwrap_or(0);
            if count > 0 {
                out.push((String::from_utf8_lossy(&key).into_owned(), count));
            }
        }
        Ok(out)
    }

    /// Listed DIDs of one collection.
    fn count(&self, collection: &str) -> Result<i64, IndexError> {
        let value = self.db.get_cf(self.cf(COUNTS)?, collection.as_bytes())?;
        Ok(value.and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes)).unwrap_or(0))
    }

    /// Every collection the DID's repo is known to hold (listed or not).
    fn repo_collections(&self, did: &str) -> Result<Vec<String>, IndexError> {
        let prefix = join(did, "");
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(REPOS)?, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status of an account the index holds as not active, if any. (Callers hold the
    /// write lock: the answer may be kept in [`Facts`].)
    fn inactive_status(&self, did: &str) -> Result<Option<String>, IndexError> {
        if self.facts().active.contains(did) {
            return Ok(None);
        }
        let status = self
            .db
            .get_pinned_cf(self.cf(INACTIVE)?, did.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        if status.is_none() {
            self.facts().active.put(did.to_string(), ());
        }
        Ok(status)
    }

    /// Distinct DIDs with known pairs, after `after`, for the pruning pass.
    fn dids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, IndexError> {
        let start = after.map(|a| join(a, "\u{7f}")).unwrap_or_default();
        let mut out: Vec<String> = Vec::new();
        let iter = self.db.iterator_cf(self.cf(REPOS)?, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, _) = item?;
            let Some((did, _)) = split(&key) else { continue };
            if out.last().map(String::as_str) == Some(did) {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(did.to_string());
        }
        Ok(out)
    }

    /// Applies changes in order; returns how many listed pairs were added and removed.
    /// Runs of adds and removes share one write batch (an overlay answers reads of keys the
    /// batch already wrote); status changes and replacements read a DID's whole key range,
    /// so they are written on their own.
    fn apply(&self, changes: &[Change]) -> Result<(u64, u64), IndexError> {
        let mut totals = (0, 0);
        let mut pending = Pending::default();
        for change in changes {
            let (added, removed) = match change {
                Change::Add { did, collection } => self.stage_add(did, collection, &mut pending)?,
                Change::Remove { did, collection } => self.stage_remove(did, collection, &mut pending)?,
                Change::Replace { did, collections } => {
                    self.flush(&mut pending)?;
                    let result = self.stage_replace(did, collections, &mut pending)?;
                    self.flush(&mut pending)?;
                    result
                }
                Change::Status { did, active, status } => {
                    self.flush(&mut pending)?;
                    let result = self.stage_status(did, *active, status.as_deref(), &mut pending.batch)?;
                    self.flush(&mut pending)?;
                    result
                }
            };
            totals.0 += added;
            totals.1 += removed;
        }
        self.flush(&mut pending)?;
        Ok(totals)
    }

    fn flush(&self, pending: &mut Pending) -> Result<(), IndexError> {
        if !pending.batch.is_empty() {
            self.db.write(std::mem::take(&mut pending.batch))?;
        }
        pending.repos.clear();
        Ok(())
    }

    /// Whether the DID's repo is known to hold the collection (the batch's own writes first).
    fn repo_has(&self, pending: &Pending, key: &[u8]) -> Result<bool, IndexError> {
        if let Some(present) = pending.repos.get(key) {
            return Ok(*present);
        }
        // Keys are joined from two strs, so they are UTF-8.
        let text = std::str::from_utf8(key).ok();
        if text.is_some_and(|text| self.facts().listed.contains(text)) {
            return Ok(true);
        }
        let present = self.db.get_pinned_cf(self.cf(REPOS)?, key)?.is_some();
        if let (true, Some(text)) = (present, text) {
            self.facts().listed.put(text.to_string(), ());
        }
        Ok(present)
    }

    fn forget_listed(&self, repo_key: &[u8]) {
        if let Ok(text) = std::str::from_utf8(repo_key) {
            self.facts().listed.pop(text);
        }
    }

    fn stage_replace(
        &self,
        did: &str,
        collections: &[String],
        pending: &mut Pending,
    ) -> Result<(u64, u64), IndexError> {
        let known = self.repo_collections(did)?;
        let (mut added, mut removed) = (0, 0);
        for old in known.iter().filter(|c| !collections.contains(c)) {
            removed += self.stage_remove(did, old, pending)?.1;
        }
        for new in collections.iter().filter(|c| !known.contains(c)) {
            added += self.stage_add(did, new, pending)?.0;
        }
        Ok((added, removed))
    }

    fn count_delta(&self, batch: &mut WriteBatch, collection: &str, delta: i64) -> Result<(), IndexError> {
        batch.merge_cf(self.cf(COUNTS)?, collection.as_bytes(), delta.to_le_bytes());
        Ok(())
    }

    fn stage_add(
        &self,
        did: &str,
        collection: &str,
        pending: &mut Pending,
    ) -> Result<(u64, u64), IndexError> {
        let repo_key = join(did, collection);
        if self.repo_has(pending, &repo_key)? {
            return Ok((0, 0));
        }
        pending.batch.put_cf(self.cf(REPOS)?, &repo_key, b"");
        pending.repos.insert(repo_key, true);
        if self.inactive_status(did)?.is_some() {
            return Ok((0, 0));
        }
        pending.batch.put_cf(self.cf(PAIRS)?, join(collection, did), b"");
        self.count_delta(&mut pending.batch, collection, 1)?;
        Ok((1, 0))
    }

    fn stage_remove(
        &self,
        did: &str,
        collection: &str,
        pending: &mut Pending,
    ) -> Result<(u64, u64), IndexError> {
        let repo_key = join(did, collection);
        if !self.repo_has(pending, &repo_key)? {
            return Ok((0, 0));
        }
        self.forget_listed(&repo_key);
        pending.batch.delete_cf(self.cf(REPOS)?, &repo_key);
        pending.repos.insert(repo_key, false);
        if self.inactive_status(did)?.is_some() {
            return Ok((0, 0));
        }
        pending.batch.delete_cf(self.cf(PAIRS)?, join(collection, did));
        self.count_delta(&mut pending.batch, collection, -1)?;
        Ok((0, 1))
    }

    fn stage_status(
        &self,
        did: &str,
        active: bool,
        status: Option<&str>,
        batch: &mut WriteBatch,
    ) -> Result<(u64, u64), IndexError> {
        let was_listed = self.inactive_status(did)?.is_none();
        let collections = self.repo_collections(did)?;
        let deleted = !active && status == Some("deleted");
        self.facts().active.pop(did);
        if deleted {
            for collection in &collections {
                self.forget_listed(&join(did, collection));
            }
        }
        let (mut added, mut removed) = (0, 0);
        if active {
            batch.delete_cf(self.cf(INACTIVE)?, did.as_bytes());
        } else {
            batch.put_cf(self.cf(INACTIVE)?, did.as_bytes(), status.unwrap_or("deactivated").as_bytes());
        }
        for collection in &collections {
            if deleted {
                batch.delete_cf(self.cf(REPOS)?, join(did, collection));
            }
            match (was_listed, active) {
                (false, true) => {
                    batch.put_cf(self.cf(PAIRS)?, join(collection, did), b"");
                    self.count_delta(batch, collection, 1)?;
                    added += 1;
                }
                (true, false) => {
                    batch.delete_cf(self.cf(PAIRS)?, join(collection, did));
                    self.count_delta(batch, collection, -1)?;
                    removed += 1;
                }
                _ => {}
            }
        }
        Ok((added, removed))
    }

    /// The relay seq up to which the live indexer has applied events.
    fn live_checkpoint(&self) -> Result<u64, IndexError> {
        let value = self.db.get_cf(self.cf(META)?, LIVE_CHECKPOINT)?;
        Ok(value.and_then(|v| v.as_slice().try_into().ok().map(u64::from_le_bytes)).unwrap_or(0))
    }

    fn save_live_checkpoint(&self, seq: u64) -> Result<(), IndexError> {
        self.db.put_cf(self.cf(META)?, LIVE_CHECKPOINT, seq.to_le_bytes())?;
        Ok(())
    }

    /// Records (DID, collection) pairs found by a backfill, to be verified before listing.
    fn add_pending(&self, pairs: &[(String, String)]) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(PENDING)?;
        for (did, collection) in pairs {
            batch.put_cf(cf, join(did, collection), b"");
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Up to `max_dids` DIDs waiting for verification, after `after`, with their collections.
    fn pending(
        &self,
        after: Option<&str>,
        max_dids: usize,
    ) -> Result<Vec<(String, Vec<String>)>, IndexError> {
        let start = after.map(|a| join(a, "\u{7f}")).unwrap_or_default();
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        let iter = self.db.iterator_cf(self.cf(PENDING)?, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, _) = item?;
            let Some((did, collection)) = split(&key) else { continue };
            if let Some((last, collections)) = out.last_mut() {
                if last == did {
                    collections.push(collection.to_string());
                    continue;
                }
            }
            if out.len() >= max_dids {
                break;
            }
            out.push((did.to_string(), vec![collection.to_string()]));
        }
        Ok(out)
    }

    /// Removes settled work from the queue: (DID, queued collections) pairs.
    fn remove_pending(&self, settled: &[(String, Vec<String>)]) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(PENDING)?;
        for (did, collections) in settled {
            for collection in collections {
                batch.delete_cf(cf, join(did, collection));
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Approximate number of keys in a column family (RocksDB's estimate).
    fn estimate_keys(&self, family: &'static str) -> u64 {
        self.cf(family)
            .ok()
            .and_then(|cf| self.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok().flatten())
            .unwrap_or(0)
    }
}

impl Index {
    pub fn open(path: &Path, config: &IndexConfig) -> Result<Index, IndexError> {
        Ok(Index { inner: RwLock::new(Some(Inner::open(path, config)?)), write: Mutex::new(()) })
    }

    /// Closes RocksDB (flushing nothing is needed: the WAL is synced by RocksDB on close).
    /// Later calls fail with [`IndexError::Closed`].
    pub fn close(&self) {
        let _write = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn read(&self) -> Option<std::sync::RwLockReadGuard<'_, Option<Inner>>> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        guard.is_some().then_some(guard)
    }

    // The methods below are [`Inner`]'s (documented there), behind the open/closed lock.

    fn with<T>(&self, f: impl FnOnce(&Inner) -> Result<T, IndexError>) -> Result<T, IndexError> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(guard.as_ref().ok_or(IndexError::Closed)?)
    }

    pub fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, IndexError> {
        self.with(|inner| inner.list(collection, after, limit))
    }

    pub fn compact(&self) -> Result<(), IndexError> {
        self.with(|inner| inner.compact())
    }

    pub fn collections(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, i64)>, IndexError> {
        self.with(|inner| inner.collections(after, limit))
    }

    pub fn count(&self, collection: &str) -> Result<i64, IndexError> {
        self.with(|inner| inner.count(collection))
    }

    pub fn repo_collections(&self, did: &str) -> Result<Vec<String>, IndexError> {
        self.with(|inner| inner.repo_collections(did))
    }

    pub fn inactive_status(&self, did: &str) -> Result<Option<String>, IndexError> {
        // Under the write lock: the answer may be kept, and must not race a status change.
        let _write = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.with(|inner| inner.inactive_status(did))
    }

    pub fn dids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>, IndexError> {
        self.with(|inner| inner.dids(after, limit))
    }

    pub fn apply(&self, changes: &[Change]) -> Result<(u64, u64), IndexError> {
        let _write = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.with(|inner| inner.apply(changes))
    }

    pub fn live_checkpoint(&self) -> Result<u64, IndexError> {
        self.with(|inner| inner.live_checkpoint())
    }

    pub fn save_live_checkpoint(&self, seq: u64) -> Result<(), IndexError> {
        self.with(|inner| inner.save_live_checkpoint(seq))
    }

    pub fn add_pending(&self, pairs: &[(String, String)]) -> Result<(), IndexError> {
        self.with(|inner| inner.add_pending(pairs))
    }

    pub fn pending(
        &self,
        after: Option<&str>,
        max_dids: usize,
    ) -> Result<Vec<(String, Vec<String>)>, IndexError> {
        self.with(|inner| inner.pending(after, max_dids))
    }

    pub fn remove_pending(&self, settled: &[(String, Vec<String>)]) -> Result<(), IndexError> {
        self.with(|inner| inner.remove_pending(settled))
    }

    pub fn estimate_keys(&self, family: &'static str) -> u64 {
        self.read().and_then(|guard| guard.as_ref().map(|inner| inner.estimate_keys(family))).unwrap_or(0)
    }

    pub fn pending_estimate(&self) -> u64 {
        self.estimate_keys(PENDING)
    }

    pub fn pairs_estimate(&self) -> u64 {
        self.estimate_keys(PAIRS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(did: &str, collection: &str) -> Change {
        Change::Add { did: did.into(), collection: collection.into() }
    }

    fn open() -> (tempdir::Dir, Index) {
        let dir = tempdir::Dir::new();
        let index = Index::open(dir.path(), &IndexConfig::default()).expect("open");
        (dir, index)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "relay-index-test-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                Dir(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn adds_are_idempotent_and_counted() {
        let (_dir, index) = open();
        index
            .apply(&[add("did:plc:b", "app.x"), add("did:plc:a", "app.x"), add("did:plc:a", "app.x")])
            .unwrap();
        index.apply(&[add("did:plc:a", "app.y")]).unwrap();
        assert_eq!(index.list("app.x", None, 10).unwrap(), vec!["did:plc:a", "did:plc:b"]);
        assert_eq!(index.count("app.x").unwrap(), 2);
        assert_eq!(index.collections(None, 10).unwrap(), vec![("app.x".into(), 2), ("app.y".into(), 1)]);
        index.apply(&[Change::Remove { did: "did:plc:a".into(), collection: "app.x".into() }]).unwrap();
        index.apply(&[Change::Remove { did: "did:plc:a".into(), collection: "app.x".into() }]).unwrap();
        assert_eq!(index.list("app.x", None, 10).unwrap(), vec!["did:plc:b"]);
        assert_eq!(index.count("app.x").unwrap(), 1);
    }

    /// The answers kept in front of RocksDB never outlive a change: each step below asks
    /// again right after a change that makes the previous (kept) answer untrue.
    #[test]
    fn kept_answers_follow_every_change() {
        let (_dir, index) = open();
        let remove = Change::Remove { did: "did:plc:a".into(), collection: "app.x".into() };
        let status = |active: bool, status: Option<&str>| Change::Status {
            did: "did:plc:a".into(),
            active,
            status: status.map(str::to_string),
        };
        assert_eq!(index.apply(&[add("did:plc:a", "app.x")]).unwrap(), (1, 0));
        // Asked twice: RocksDB answers, then the kept answer.
        assert_eq!(index.apply(&[add("did:plc:a", "app.x")]).unwrap(), (0, 0));
        assert_eq!(index.apply(&[add("did:plc:a", "app.x")]).unwrap(), (0, 0));
        assert_eq!(index.apply(std::slice::from_ref(&remove)).unwrap(), (0, 1));
        assert_eq!(index.apply(&[add("did:plc:a", "app.x")]).unwrap(), (1, 0), "a removed pair comes back");
        assert_eq!(index.inactive_status("did:plc:a").unwrap(), None);
        assert_eq!(index.inactive_status("did:plc:a").unwrap(), None);
        index.apply(&[status(false, Some("deactivated"))]).unwrap();
        assert_eq!(index.inactive_status("did:plc:a").unwrap().as_deref(), Some("deactivated"));
        assert_eq!(index.count("app.x").unwrap(), 0);
        assert_eq!(index.apply(&[add("did:plc:a", "app.x")]).unwrap(), (0, 0), "not listed while inactive");
        index.apply(&[status(true, None)]).unwrap();
        assert_eq!(index.inactive_status("did:plc:a").unwrap(), None);
        assert_eq!(index.count("app.x").unwrap(), 1);
        index.apply(&[status(false, Some("deleted"))]).unwrap();
        assert_eq!(index.repo_collections("did:plc:a").unwrap(), Vec::<String>::new());
        index.apply(&[status(true, None)]).unwrap();
        assert_eq!(
            index.apply(&[add("did:plc:a", "app.x")]).unwrap(),
            (1, 0),
            "a deleted repo's pairs are gone"
        );
        assert_eq!(index.list("app.x", None, 10).unwrap(), vec!["did:plc:a"]);
    }

    #[test]
    fn pagination_skips_only_the_cursor_did() {
        let (_dir, index) = open();
        // One DID extends another: the cursor must not skip the longer one.
        index
            .apply(&[add("did:plc:abc", "app.x"), add("did:plc:abcd", "app.x"), add("did:plc:abd", "app.x")])
            .unwrap();
        index.apply(&[add("did:plc:abc", "app.xy")]).unwrap();
        assert_eq!(
            index.list("app.x", Some("did:plc:abc"), 10).unwrap(),
            vec!["did:plc:abcd", "did:plc:abd"]
        );
        assert_eq!(index.list("app.x", None, 2).unwrap(), vec!["did:plc:abc", "did:plc:abcd"]);
        assert_eq!(index.list("app.xy", None, 10).unwrap(), vec!["did:plc:abc"]);
    }

    #[test]
    fn status_hides_and_restores_and_delete_drops() {
        let (_dir, index) = open();
        index
            .apply(&[add("did:plc:a", "app.x"), add("did:plc:a", "app.y"), add("did:plc:b", "app.x")])
            .unwrap();
        let deactivate =
            Change::Status { did: "did:plc:a".into(), active: false, status: Some("deactivated".into()) };
        index.apply(&[deactivate.clone(), deactivate]).unwrap();
        assert_eq!(index.list("app.x", None, 10).unwrap(), vec!["did:plc:b"]);
        assert_eq!(index.count("app.y").unwrap(), 0);
        // A create while deactivated is remembered, not listed.
        index.apply(&[add("did:plc:a", "app.z")]).unwrap();
        assert!(index.list("app.z", None, 10).unwrap().is_empty());
        index.apply(&[Change::Status { did: "did:plc:a".into(), active: true, status: None }]).unwrap();
        assert_eq!(index.list("app.x", None, 10).unwrap(), vec!["did:plc:a", "did:plc:b"]);
        assert_eq!(index.list("app.z", None, 10).unwrap(), vec!["did:plc:a"]);
        assert_eq!(index.count("app.x").unwrap(), 2);
        index
            .apply(&[Change::Status {
                did: "did:plc:a".into(),
                active: false,
                status: Some("deleted".into()),
            }])
            .unwrap();
        assert!(index.repo_collections("did:plc:a").unwrap().is_empty());
        assert_eq!(index.count("app.x").unwrap(), 1);
        assert_eq!(index.count("app.z").unwrap(), 0);
    }

    #[test]
    fn replace_sets_exactly_the_given_collections() {
        let (_dir, index) = open();
        index.apply(&[add("did:plc:a", "app.x"), add("did:plc:a", "app.y")]).unwrap();
        index
            .apply(&[Change::Replace {
                did: "did:plc:a".into(),
                collections: vec!["app.y".into(), "app.z".into()],
            }])
            .unwrap();
        assert_eq!(index.repo_collections("did:plc:a").unwrap(), vec!["app.y", "app.z"]);
        assert_eq!(index.count("app.x").unwrap(), 0);
    }

    #[test]
    fn pending_pairs_are_listed_only_when_verified() {
        let (_dir, index) = open();
        let pairs = vec![
            ("did:plc:a".to_string(), "app.x".to_string()),
            ("did:plc:a".to_string(), "app.y".to_string()),
            ("did:plc:ghost".to_string(), "app.x".to_string()),
        ];
        index.add_pending(&pairs).unwrap();
        let pending = index.pending(None, 10).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0], ("did:plc:a".to_string(), vec!["app.x".to_string(), "app.y".to_string()]));
        assert_eq!(index.pending(Some("did:plc:a"), 10).unwrap().len(), 1);
        // Verified: listed, then off the queue; the ghost only leaves the queue.
        index.apply(&[add("did:plc:a", "app.x"), add("did:plc:a", "app.y")]).unwrap();
        index.remove_pending(&pending).unwrap();
        assert!(index.pending(None, 10).unwrap().is_empty());
        assert_eq!(index.list("app.x", None, 10).unwrap(), vec!["did:plc:a"]);
    }

    #[test]
    fn dids_walks_distinct_dids() {
        let (_dir, index) = open();
        index
            .apply(&[add("did:plc:a", "app.x"), add("did:plc:a", "app.y"), add("did:plc:b", "app.x")])
            .unwrap();
        assert_eq!(index.dids(None, 10).unwrap(), vec!["did:plc:a", "did:plc:b"]);
        assert_eq!(index.dids(Some("did:plc:a"), 10).unwrap(), vec!["did:plc:b"]);
        assert_eq!(index.dids(None, 1).unwrap(), vec!["did:plc:a"]);
    }

    #[test]
    fn checkpoint_survives_reopen() {
        let dir = tempdir::Dir::new();
        {
            let index = Index::open(dir.path(), &IndexConfig::default()).unwrap();
            index.apply(&[add("did:plc:a", "app.x")]).unwrap();
            index.save_live_checkpoint(42).unwrap();
        }
        let index = Index::open(dir.path(), &IndexConfig::default()).unwrap();
        assert_eq!(index.live_checkpoint().unwrap(), 42);
        assert_eq!(index.count("app.x").unwrap(), 1);
    }

    #[test]
    fn pagination_never_skips_or_repeats_under_concurrent_writes() {
        let (_dir, index) = open();
        let index = std::sync::Arc::new(index);
        // Stable DIDs stay listed throughout; churn DIDs come and go while we page.
        let stable: Vec<String> = (0..600).map(|i| format!("did:plc:s{:05}", i * 14)).collect();
        let changes: Vec<Change> = stable.iter().map(|d| add(d, "app.x")).collect();
        index.apply(&changes).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (index, stop) = (index.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(9);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let did = format!("did:plc:s{:05}", rng.u32(0..4200) | 1);
                    let change = match rng.u8(0..3) {
                        0 => Change::Remove { did, collection: "app.x".into() },
                        1 => Change::Status { did, active: rng.bool(), status: None },
                        _ => add(&did, "app.x"),
                    };
                    index.apply(&[change]).unwrap();
                }
            })
        };
        for limit in [1, 7, 50, 1000] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = index.list("app.x", cursor.as_deref(), limit).unwrap();
                seen.extend(page.iter().cloned());
                if page.len() < limit {
                    break;
                }
                cursor = page.last().cloned();
            }
            let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
            assert_eq!(unique.len(), seen.len(), "a DID repeated with limit {limit}");
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages out of order with limit {limit}");
            for did in &stable {
                assert!(unique.contains(did), "{did} skipped with limit {limit}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }
}
