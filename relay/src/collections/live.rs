//! Live indexing: follows the relay's own validated output (the sequenced log) and turns
//! each event into index changes. Following the log rather than the validation stage means
//! the index only ever reflects events that are durable, and a restart resumes from the
//! index's checkpoint by re-reading the log (changes are idempotent).

use super::index::Change;
use super::Collections;
use crate::atproto::frame::{self, Commit, Event};
use crate::atproto::mst::Mst;
use crate::atproto::{car, commit::SignedCommit};
use crate::fanout::{Fanout, Followed, Follower};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a commit does to its repo's collection set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommitEffects {
    /// Collections that hold a record after the commit (a create or update in them).
    pub present: Vec<String>,
    /// Collections whose last record the commit deleted.
    pub emptied: Vec<String>,
    /// Collections with deletes where the commit's blocks cannot tell whether records remain.
    pub unknown: Vec<String>,
}

/// Works out collection presence from the ops and, for deletes, from the MST proof: after a
/// delete of `coll/rkey`, the nearest remaining keys on either side are on the proof's path;
/// since keys sort by collection first, the collection still has records exactly when one of
/// those neighbours starts with `coll/`.
pub fn commit_effects(commit: &Commit) -> CommitEffects {
    let mut by_collection: BTreeMap<&str, (bool, Option<&str>)> = BTreeMap::new();
    for op in &commit.ops {
        let Some((collection, _)) = op.path.split_once('/') else { continue };
        let entry = by_collection.entry(collection).or_insert((false, None));
        match op.action.as_str() {
            "create" | "update" => entry.0 = true,
            "delete" => {
                entry.1.get_or_insert(op.path.as_str());
            }
            _ => {}
        }
    }
    let mut effects = CommitEffects::default();
    let mut tree: Option<Result<(car::Car, Mst), ()>> = None;
    for (collection, (written, deleted)) in by_collection {
        if written {
            effects.present.push(collection.to_string());
            continue;
        }
        let Some(deleted_path) = deleted else { continue };
        let opened = tree.get_or_insert_with(|| open_tree(commit));
        let still_there = match opened {
            Ok((car, mst)) => mst.neighbors(deleted_path.as_bytes(), car).ok().map(|(below, above)| {
                let prefix = format!("{collection}/");
                [below, above].iter().flatten().any(|key| key.starts_with(prefix.as_bytes()))
            }),
            Err(()) => None,
        };
        match still_there {
            Some(true) => effects.present.push(collection.to_string()),
            Some(false) => effects.emptied.push(collection.to_string()),
            None => effects.unknown.push(collection.to_string()),
        }
    }
    effects
}

fn open_tree(commit: &Commit) -> Result<(car::Car<'_>, Mst), ()> {
    // The log holds only events this relay validated (blocks hashed then) behind a CRC.
    let car = car::read_trusted(&commit.blocks, frame::MAX_COMMIT_BLOCKS_BYTES).map_err(|_| ())?;
    let root = car.get(&commit.commit).ok_or(())?;
    let signed = SignedCommit::decode(root).map_err(|_| ())?;
    Ok((car, Mst::from_root(signed.data)))
}

/// The index changes of one event, and whether its repo needs a describeRepo check.
pub fn event_changes(event: &Event) -> (Vec<Change>, Option<String>) {
    match event {
        Event::Commit(commit) => {
            let effects = commit_effects(commit);
            let did = &commit.repo;
            let mut changes: Vec<Change> = effects
                .present
                .into_iter()
                .map(|collection| Change::Add { did: did.clone(), collection })
                .collect();
            changes.extend(
                effects.emptied.into_iter().map(|collection| Change::Remove { did: did.clone(), collection }),
            );
            let check = (!effects.unknown.is_empty()).then(|| did.clone());
            (changes, check)
        }
        // A #sync may replace the repo wholesale: only the PDS can say what it holds now.
        Event::Sync(sync) => (Vec::new(), Some(sync.did.clone())),
        Event::Account(account) => {
            let change = Change::Status {
                did: account.did.clone(),
                active: account.active,
                status: account.status.clone(),
            };
            (vec![change], None)
        }
        _ => (Vec::new(), None),
    }
}

/// How often the checkpoint is saved while events flow (changes are idempotent, so a crash
/// only repeats at most this much work).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Follows the log from the index's checkpoint forever.
pub async fn run(collections: Arc<Collections>, fanout: Arc<Fanout>) {
    let start = match collections.index.live_checkpoint() {
        Ok(seq) => seq,
        Err(error) => {
            tracing::error!(%error, "collections: cannot read the live checkpoint; live indexing is off");
            return;
        }
    };
    let head = fanout.sequencer.current_head();
    if start > head {
        tracing::warn!(start, head, "collections: index checkpoint is ahead of the event log (log reset?)");
    }
    tracing::info!(after = start, head, "collections: live indexing");
    let mut follower = Follower::new(fanout, start);
    let mut last_saved = Instant::now();
    let mut position = start;
    let mut dirty = false;
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            _ = tokio::time::sleep(CHECKPOINT_EVERY), if dirty => {
                save_checkpoint(&collections, position);
                dirty = false;
                last_saved = Instant::now();
                continue;
            }
        };
        match next {
            Followed::Event { seq, frame } => {
                // Take whatever else is ready and index it in one write: one blocking call and
                // one RocksDB batch per burst instead of per event.
                let mut frames = vec![frame];
                position = seq;
                while frames.len() < MAX_BATCH_EVENTS {
                    match follower.next_ready() {
                        Some(Followed::Event { seq, frame }) => {
                            frames.push(frame);
                            position = seq;
                        }
                        _ => break,
                    }
                }
                if !apply_frames(&collections, frames).await {
                    return;
                }
                dirty = true;
                collections.metrics.indexed_seq.set(position as i64);
                if last_saved.elapsed() >= CHECKPOINT_EVERY {
                    save_checkpoint(&collections, position);
                    dirty = false;
                    last_saved = Instant::now();
                }
            }
            Followed::FellBehind { resumed_after } => {
                tracing::warn!(
                    resumed_after,
                    "collections: the index fell out of the replay window; events were missed (run a backfill)"
                );
                collections.metrics.fell_behind.inc();
                position = resumed_after;
            }
            Followed::Closed => {
                save_checkpoint(&collections, position);
                return;
            }
        }
    }
}

fn save_checkpoint(collections: &Collections, seq: u64) {
    if let Err(error) = collections.index.save_live_checkpoint(seq) {
        tracing::warn!(%error, "collections: saving the live checkpoint");
    }
}

/// Events indexed per RocksDB batch at most.
const MAX_BATCH_EVENTS: usize = 512;

/// Indexes a burst of frames; returns false once the index is closed (shutdown).
async fn apply_frames(collections: &Arc<Collections>, frames: Vec<bytes::Bytes>) -> bool {
    let index = collections.index.clone();
    let work = tokio::task::spawn_blocking(move || {
        let mut changes = Vec::new();
        let mut checks = Vec::new();
        for bytes in &frames {
            let Ok(event) = frame::decode_logged(bytes) else { continue };
            let (event_changes, check) = event_changes(&event);
            if let Event::Commit(commit) = &event {
                // A valid commit proves the account lives on a host we trust: undo a
                // "PDS gone" prune.
                let status = index.inactive_status(&commit.repo).ok().flatten();
                if status.as_deref() == Some(super::prune::PDS_GONE) {
                    changes.push(Change::Status { did: commit.repo.clone(), active: true, status: None });
                }
            }
            changes.extend(event_changes);
            checks.extend(check);
        }
        index.apply(&changes).map(|totals| (totals, checks))
    });
    match work.await {
        Ok(Ok(((added, removed), checks))) => {
            collections.metrics.note_changes(added, removed);
            for did in checks {
                collections.metrics.describe_fallbacks.inc();
                collections.request_check(&did);
            }
        }
        Ok(Err(super::index::IndexError::Closed)) => return false,
        Ok(Err(error)) => tracing::error!(%error, "collections: applying live changes"),
        Err(error) => tracing::error!(%error, "collections: index task failed"),
    }
    true
}
