//! Writing repositories: a full in-memory repo that produces real, signed Sync 1.1
//! `#commit` events with MST proofs. Used by the fleet simulator, the tests and
//! the benchmarks, so what the relay validates is exactly what a PDS would send.

use crate::car;
use crate::cbor;
use crate::commit::SignedCommit;
use crate::crypto::SigningKey;
use crate::frame::{Commit, RepoOp, Sync};
use crate::mst::{Mst, MstError, RecordingSource};
use crate::syntax;
use cid::Cid;
use std::collections::HashMap;

/// A change to make in a repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Create { path: String, record: Vec<u8> },
    Update { path: String, record: Vec<u8> },
    Delete { path: String },
}

impl Write {
    pub fn path(&self) -> &str {
        match self {
            Write::Create { path, .. } | Write::Update { path, .. } | Write::Delete { path } => path,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("MST: {0}")]
    Mst(#[from] MstError),
    #[error("create of {0}, which already exists")]
    Exists(String),
    #[error("update or delete of {0}, which does not exist")]
    Missing(String),
}

/// A whole repository held in memory.
pub struct Repo {
    pub did: String,
    pub key: SigningKey,
    pub rev: Option<String>,
    pub data: Cid,
    tree: Mst,
    blocks: HashMap<Cid, Vec<u8>>,
    /// Blocks the tree referred to at the last compaction (see [`Repo::compact_if_grown`]).
    live_blocks: usize,
    last_tid_micros: u64,
    /// The latest signed commit: its CID and block (`getLatestCommit` / `getBlocks`).
    pub head: Option<(Cid, Vec<u8>)>,
}

impl Repo {
    pub fn new(did: &str, key: SigningKey) -> Repo {
        let mut tree = Mst::empty();
        let (data, new_blocks) = tree.root_and_new_blocks();
        Repo {
            did: did.to_string(),
            key,
            rev: None,
            data,
            tree,
            blocks: new_blocks.into_iter().collect(),
            live_blocks: 1,
            last_tid_micros: 0,
            head: None,
        }
    }

    /// A TID newer than every previous rev of this repo.
    fn next_rev(&mut self, now_micros: u64) -> String {
        self.last_tid_micros = now_micros.max(self.last_tid_micros + 1);
        syntax::tid_from_parts(self.last_tid_micros, 0)
    }

    /// The collections holding at least one record (what `describeRepo` reports).
    pub fn collections(&mut self) -> Result<Vec<String>, MstError> {
        let mut out: Vec<String> = Vec::new();
        for (key, _) in self.tree.entries(&self.blocks)? {
            let path = String::from_utf8_lossy(&key);
            let collection = path.split('/').next().unwrap_or_default();
            if out.last().map(String::as_str) != Some(collection) {
                out.push(collection.to_string());
            }
        }
        Ok(out)
    }

    /// Blocks held in memory (nodes and records, current and not yet compacted).
    pub fn stored_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn get(&mut self, path: &str) -> Result<Option<Cid>, MstError> {
        self.tree.get(path.as_bytes(), &self.blocks)
    }

    /// Applies writes, signs a new commit and returns the `#commit` event for it.
    pub fn commit(&mut self, writes: &[Write], seq: i64, now_micros: u64) -> Result<Commit, RepoError> {
        let prev_data = self.data;
        self.check_writes(writes)?;
        // Nodes read while applying the writes: a consumer's inverter may need them too.
        let forward = RecordingSource::new(&self.blocks);
        let tree = &mut self.tree;
        let mut ops = Vec::with_capacity(writes.len());
        let mut record_blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
        for write in writes {
            let key = write.path().as_bytes();
            let (action, cid, prev) = match write {
                Write::Create { path, record } | Write::Update { path, record } => {
                    let cid = cbor::cid_for_cbor(record);
                    record_blocks.push((cid, record.clone()));
                    let prev = tree.insert(key, cid, &forward)?;
                    let is_create = matches!(write, Write::Create { .. });
                    match (is_create, prev) {
                        (true, Some(_)) => return Err(RepoError::Exists(path.clone())),
                        (false, None) => return Err(RepoError::Missing(path.clone())),
                        _ => {}
                    }
                    (if is_create { "create" } else { "update" }, Some(cid), prev)
                }
                Write::Delete { path } => {
                    let prev = tree.remove(key, &forward)?;
                    if prev.is_none() {
                        return Err(RepoError::Missing(path.clone()));
                    }
                    ("delete", None, prev)
                }
            };
            ops.push(RepoOp { action: action.to_string(), path: write.path().to_string(), cid, prev });
        }
        let forward_reads: Vec<Cid> = forward.read.borrow().iter().copied().collect();
        drop(forward);
        let (data, new_nodes) = self.tree.root_and_new_blocks();
        self.blocks.extend(new_nodes.iter().cloned());
        for (cid, bytes) in &record_blocks {
            self.blocks.insert(*cid, bytes.clone());
        }
        let mut proof = self.inversion_proof(data, &ops)?;
        proof.extend(forward_reads.into_iter().filter(|cid| *cid != prev_data));
        proof.sort();
        proof.dedup();
        let rev = self.next_rev(now_micros);
        let (_, commit_bytes, commit_cid) = SignedCommit::sign(&self.did, &rev, data, &self.key);
        let mut car_blocks: Vec<(Cid, &[u8])> = vec![(commit_cid, commit_bytes.as_slice())];
        for (cid, bytes) in &new_nodes {
            car_blocks.push((*cid, bytes));
        }
        for cid in &proof {
            if !new_nodes.iter().any(|(c, _)| c == cid) {
                car_blocks.push((*cid, &self.blocks[cid]));
            }
        }
        for (cid, bytes) in &record_blocks {
            car_blocks.push((*cid, bytes));
        }
        let blocks = car::write(&[commit_cid], car_blocks.iter().map(|(c, b)| (c, *b)));
        self.head = Some((commit_cid, commit_bytes.clone()));
        let since = self.rev.replace(rev.clone());
        self.data = data;
        self.compact_if_grown()?;
        Ok(Commit {
            seq,
            rebase: false,
            too_big: false,
            repo: self.did.clone(),
            commit: commit_cid,
            rev,
            since,
            blocks,
            ops,
            blobs: Vec::new(),
            prev_data: Some(prev_data),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    /// Drops blocks the current tree no longer refers to (replaced nodes, deleted records)
    /// once the store has doubled since the last compaction: amortised O(1) per commit, and
    /// a writer that runs for hours holds its repo, not its whole history.
    fn compact_if_grown(&mut self) -> Result<(), MstError> {
        if self.blocks.len() <= 2 * self.live_blocks + 64 {
            return Ok(());
        }
        let reachable = self.tree.reachable(&self.blocks)?;
        self.blocks.retain(|cid, _| reachable.contains(cid));
        self.live_blocks = self.blocks.len();
        Ok(())
    }

    /// Refuses writes that do not fit the repo (create of an existing path, update or
    /// delete of a missing one, two writes to one path) before anything changes.
    fn check_writes(&mut self, writes: &[Write]) -> Result<(), RepoError> {
        let mut seen = std::collections::HashSet::new();
        for write in writes {
            let path = write.path();
            if !seen.insert(path) {
                return Err(RepoError::Exists(path.to_string()));
            }
            let exists = self.tree.get(path.as_bytes(), &self.blocks)?.is_some();
            match (write, exists) {
                (Write::Create { .. }, true) => return Err(RepoError::Exists(path.to_string())),
                (Write::Update { .. } | Write::Delete { .. }, false) => {
                    return Err(RepoError::Missing(path.to_string()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The existing nodes a consumer needs to invert `ops` on the new tree.
    fn inversion_proof(&self, data: Cid, ops: &[RepoOp]) -> Result<Vec<Cid>, MstError> {
        let recorder = RecordingSource::new(&self.blocks);
        let mut tree = Mst::from_root(data);
        for op in ops.iter().rev() {
            match op.action.as_str() {
                "create" => {
                    tree.remove(op.path.as_bytes(), &recorder)?;
                }
                _ => {
                    if let Some(prev) = op.prev {
                        tree.insert(op.path.as_bytes(), prev, &recorder)?;
                    }
                }
            }
        }
        for op in ops {
            Mst::from_root(data).get(op.path.as_bytes(), &recorder)?;
        }
        let read = recorder.read.borrow();
        Ok(read.iter().copied().collect())
    }

    /// A `#sync` event for the current state (signed commit block only).
    pub fn sync_event(&mut self, seq: i64, now_micros: u64) -> Sync {
        let rev = self.next_rev(now_micros);
        let (_, bytes, cid) = SignedCommit::sign(&self.did, &rev, self.data, &self.key);
        self.rev = Some(rev.clone());
        self.head = Some((cid, bytes.clone()));
        Sync {
            seq,
            did: self.did.clone(),
            blocks: car::write(&[cid], [(&cid, bytes.as_slice())]),
            rev,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// A small, realistic `app.bsky.feed.post` record.
pub fn sample_post(text: &str, created_at: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Post<'a> {
        text: &'a str,
        #[serde(rename = "$type")]
        kind: &'a str,
        langs: [&'a str; 1],
        #[serde(rename = "createdAt")]
        created_at: &'a str,
    }
    let post = Post { text, kind: "app.bsky.feed.post", langs: ["en"], created_at };
    cbor::encode(&post).expect("records always encode")
}
