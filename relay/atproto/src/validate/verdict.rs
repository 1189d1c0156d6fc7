//! The verdict: is this event from a PDS true, and what does it change?
//!
//! [`verify_event`] is a pure function of the event, what the relay knows about the
//! account (identity, status, which host delivered the event) and the last
//! accepted `(rev, data)` for the DID. It follows the Sync 1.1 checklist, cheapest
//! checks first. A broken chain (`since`/`prevData` not matching what we saw last)
//! is reported beside an acceptance, not as a rejection: relays pass such commits on.

use crate::car::{self, CarError};
use crate::cbor::{self, Limits};
use crate::commit::SignedCommit;
use crate::crypto::SignatureError;
use crate::frame::{
    Commit, Event, RepoOp, Sync, MAX_COMMIT_BLOCKS_BYTES, MAX_RECORD_BYTES, MAX_SYNC_BLOCKS_BYTES,
};
use crate::identity::Identity;
use crate::mst::{Mst, MstError};
use crate::syntax;
use cid::Cid;
use std::collections::HashSet;
use std::time::Duration;

/// The last accepted state of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoState {
    pub rev: String,
    pub data: Cid,
}

/// What the relay knows about the account when the event arrives.
#[derive(Debug, Clone, Copy)]
pub struct AccountView<'a> {
    /// `None`: the DID has no working atproto identity.
    pub identity: Option<&'a Identity>,
    /// Hosting status as the relay sees it (upstream status plus local takedowns).
    pub active: bool,
    /// The host whose connection delivered the event; `None` skips the authority check.
    pub source_host: Option<&'a str>,
    /// The relay already serves this account from `source_host` (its stored host). It lets
    /// `#account`/`#identity` through when the DID no longer resolves: a deleted account's
    /// DID is often tombstoned before its last `#account` arrives.
    pub known_on_source: bool,
}

/// Validation settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Accept commits without `prevData` / op `prev` (pre-Sync-1.1 upstreams). Off by default.
    pub lenient: bool,
    /// How far a rev's timestamp may be ahead of the relay's clock.
    pub max_rev_future: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { lenient: false, max_rev_future: Duration::from_secs(300) }
    }
}

/// Why an event was dropped. `reason()` gives a stable, low-cardinality label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("DID has no working atproto identity")]
    NoIdentity,
    #[error("identity has no #atproto signing key")]
    NoSigningKey,
    #[error("event came from {got}, but the account's PDS is {expected:?}")]
    WrongHost { expected: Option<String>, got: String },
    #[error("account is not active")]
    AccountInactive,
    #[error("rev {0:?} is not a valid TID")]
    BadRev(String),
    #[error("rev {got} is not newer than the last accepted rev {last}")]
    RevNotNewer { last: String, got: String },
    #[error("rev {0} is too far in the future")]
    RevInFuture(String),
    #[error("blocks: {0}")]
    BadCar(CarError),
    #[error("CAR root is not the commit CID")]
    CarRootMismatch,
    #[error("commit block missing from the CAR")]
    CommitBlockMissing,
    #[error("commit object does not decode: {0}")]
    BadCommitObject(String),
    #[error("commit version {0} (only 3 is supported)")]
    CommitVersion(u64),
    #[error("event field {0} does not match the signed commit")]
    FieldMismatch(&'static str),
    #[error("signature: {0}")]
    BadSignature(SignatureError),
    #[error("commit has no prevData (strict Sync 1.1 validation)")]
    MissingPrevData,
    #[error("op {path}: {problem}")]
    BadOp { path: String, problem: &'static str },
    #[error("record {path}: {problem}")]
    BadRecord { path: String, problem: String },
    #[error("MST: {0}")]
    Mst(MstError),
    #[error("inverted tree root {computed} does not equal prevData {expected}")]
    InversionMismatch { expected: String, computed: String },
    #[error("{0} events are not relayed")]
    NotRelayable(String),
    #[error("DID {0:?} is not valid DID syntax")]
    BadDid(String),
    #[error("field {field}: {problem}")]
    BadField { field: &'static str, problem: &'static str },
    #[error("the DID's identity could not be resolved for a long time")]
    IdentityUnavailable,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NoIdentity => "no_identity",
            Rejection::NoSigningKey => "no_signing_key",
            Rejection::WrongHost { .. } => "wrong_host",
            Rejection::AccountInactive => "account_inactive",
            Rejection::BadRev(_) => "bad_rev",
            Rejection::RevNotNewer { .. } => "rev_not_newer",
            Rejection::RevInFuture(_) => "rev_in_future",
            Rejection::BadCar(CarError::TooLarge(..)) => "oversize",
            Rejection::BadCar(_) => "bad_car",
            Rejection::CarRootMismatch => "car_root_mismatch",
            Rejection::CommitBlockMissing => "commit_block_missing",
            Rejection::BadCommitObject(_) => "bad_commit_object",
            Rejection::CommitVersion(_) => "commit_version",
            Rejection::FieldMismatch(_) => "field_mismatch",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::MissingPrevData => "missing_prev_data",
            Rejection::BadOp { .. } => "bad_op",
            Rejection::BadRecord { .. } => "bad_record",
            Rejection::Mst(_) => "bad_mst",
            Rejection::InversionMismatch { .. } => "inversion_mismatch",
            Rejection::NotRelayable(_) => "not_relayable",
            Rejection::BadDid(_) => "bad_did",
            Rejection::BadField { .. } => "bad_field",
            Rejection::IdentityUnavailable => "identity_unavailable",
        }
    }

    /// Rejections that a fresh identity lookup might cure (key rotation, migration).
    pub fn identity_may_be_stale(&self) -> bool {
        matches!(self, Rejection::BadSignature(_) | Rejection::WrongHost { .. } | Rejection::NoSigningKey)
    }
}

/// A discontinuity: the commit does not follow from the last state we accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    SinceMismatch { expected: String, got: Option<String> },
    PrevDataMismatch { expected: Cid, got: Option<Cid> },
}

/// An accepted event and what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    /// New repo state to store (for `#commit` and `#sync`).
    pub new_state: Option<RepoState>,
    pub chain_break: Option<ChainBreak>,
}

/// Judges one event. `now_micros` is the relay's clock, for the future-rev check.
pub fn verify_event(
    event: &Event,
    account: &AccountView,
    last: Option<&RepoState>,
    policy: &Policy,
    now_micros: u64,
) -> Result<Accepted, Rejection> {
    check_fields(event)?;
    match event {
        Event::Commit(commit) => verify_commit(commit, account, last, policy, now_micros),
        Event::Sync(sync) => verify_sync(sync, account, last, policy, now_micros),
        Event::Account(_) | Event::Identity(_) => {
            check_authority(account)?;
            Ok(Accepted::default())
        }
        other => Err(Rejection::NotRelayable(other.type_name().to_string())),
    }
}

/// Longest `#account.status` relayed: the known values are short words; anything longer
/// is junk that would otherwise be stored and re-broadcast.
pub const MAX_STATUS_LEN: usize = 64;

/// Shape checks that need no state: every string an event carries is bounded and of its
/// lexicon's syntax before the relay looks anything up or stores anything for it.
pub fn check_fields(event: &Event) -> Result<(), Rejection> {
    let Some(did) = event.did() else {
        return Err(Rejection::NotRelayable(event.type_name().to_string()));
    };
    if syntax::validate_did(did).is_err() {
        return Err(Rejection::BadDid(did.chars().take(64).collect()));
    }
    let time = match event {
        Event::Commit(commit) => {
            if commit.since.as_deref().is_some_and(|since| syntax::validate_tid(since).is_err()) {
                return Err(Rejection::BadField { field: "since", problem: "not a TID" });
            }
            &commit.time
        }
        Event::Sync(sync) => &sync.time,
        Event::Identity(identity) => {
            if identity.handle.as_deref().is_some_and(|handle| syntax::validate_handle(handle).is_err()) {
                return Err(Rejection::BadField { field: "handle", problem: "not a valid handle" });
            }
            &identity.time
        }
        Event::Account(account) => {
            if account.status.as_deref().is_some_and(|status| !is_status_token(status)) {
                return Err(Rejection::BadField { field: "status", problem: "not a short status token" });
            }
            &account.time
        }
        _ => return Ok(()),
    };
    if time.len() > syntax::MAX_DATETIME_LEN {
        return Err(Rejection::BadField { field: "time", problem: "longer than a datetime" });
    }
    Ok(())
}

fn is_status_token(status: &str) -> bool {
    !status.is_empty()
        && status.len() <= MAX_STATUS_LEN
        && status.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `#identity` and `#account` speak for an account: only its own PDS may send them. When
/// the DID no longer resolves, only the host the relay already serves it from may.
fn check_authority(account: &AccountView) -> Result<(), Rejection> {
    match account.identity {
        Some(_) => check_host(account),
        None if account.known_on_source || account.source_host.is_none() => Ok(()),
        None => Err(Rejection::NoIdentity),
    }
}

fn check_account(account: &AccountView) -> Result<(), Rejection> {
    let identity = account.identity.ok_or(Rejection::NoIdentity)?;
    if identity.signing_key.is_none() {
        return Err(Rejection::NoSigningKey);
    }
    check_host(account)?;
    if !account.active {
        return Err(Rejection::AccountInactive);
    }
    Ok(())
}

fn check_host(account: &AccountView) -> Result<(), Rejection> {
    let (Some(identity), Some(source)) = (account.identity, account.source_host) else {
        return Ok(());
    };
    let expected = identity.pds_host();
    if expected.is_some_and(|pds| pds.eq_ignore_ascii_case(source)) {
        Ok(())
    } else {
        Err(Rejection::WrongHost { expected: expected.map(str::to_string), got: source.to_string() })
    }
}

fn check_rev(rev: &str, last: Option<&RepoState>, policy: &Policy, now_micros: u64) -> Result<(), Rejection> {
    let micros = syntax::tid_timestamp_micros(rev).map_err(|_| Rejection::BadRev(rev.to_string()))?;
    if let Some(last) = last {
        if rev <= last.rev.as_str() {
            return Err(Rejection::RevNotNewer { last: last.rev.clone(), got: rev.to_string() });
        }
    }
    let allowed = now_micros.saturating_add(policy.max_rev_future.as_micros() as u64);
    if micros > allowed {
        return Err(Rejection::RevInFuture(rev.to_string()));
    }
    Ok(())
}

/// Reads the CAR, checks its root and returns the decoded commit with the parsed CAR.
fn open_commit<'b>(
    blocks: &'b [u8],
    max_len: usize,
    expected_cid: Option<&Cid>,
) -> Result<(car::Car<'b>, SignedCommit, Cid), Rejection> {
    let car = car::read(blocks, max_len).map_err(Rejection::BadCar)?;
    let root = car.roots[0];
    if expected_cid.is_some_and(|cid| *cid != root) {
        return Err(Rejection::CarRootMismatch);
    }
    let bytes = car.get(&root).ok_or(Rejection::CommitBlockMissing)?;
    let commit = SignedCommit::decode(bytes).map_err(|e| Rejection::BadCommitObject(e.to_string()))?;
    if commit.version != 3 {
        return Err(Rejection::CommitVersion(commit.version));
    }
    Ok((car, commit, root))
}

fn verify_signature(commit: &SignedCommit, account: &AccountView) -> Result<(), Rejection> {
    let key = account.identity.and_then(|i| i.signing_key.as_ref()).ok_or(Rejection::NoSigningKey)?;
    commit.verify(key).map_err(Rejection::BadSignature)
}

fn verify_commit(
    event: &Commit,
    account: &AccountView,
    last: Option<&RepoState>,
    policy: &Policy,
    now_micros: u64,
) -> Result<Accepted, Rejection> {
    check_account(account)?;
    check_rev(&event.rev, last, policy, now_micros)?;
    let (car, commit, _) = open_commit(&event.blocks, MAX_COMMIT_BLOCKS_BYTES, Some(&event.commit))?;
    if commit.did != event.repo {
        return Err(Rejection::FieldMismatch("repo"));
    }
    if commit.rev != event.rev {
        return Err(Rejection::FieldMismatch("rev"));
    }
    check_ops_shape(&event.ops, policy)?;
    check_records(&event.ops, &car)?;
    verify_signature(&commit, account)?;
    let mut tree = Mst::from_root(commit.data);
    check_ops_applied(&mut tree, &event.ops, &car, policy)?;
    match event.prev_data {
        Some(prev_data) => invert(&mut tree, &event.ops, &car, prev_data)?,
        // A new repo's first commit (no `since`, nothing known before it) has no
        // previous tree to invert to; PDSes emit it without prevData.
        None if last.is_none() && event.since.is_none() => {}
        None if policy.lenient => {}
        None => return Err(Rejection::MissingPrevData),
    }
    let chain_break = last.and_then(|last| detect_chain_break(event, last));
    Ok(Accepted { new_state: Some(RepoState { rev: commit.rev, data: commit.data }), chain_break })
}

fn detect_chain_break(event: &Commit, last: &RepoState) -> Option<ChainBreak> {
    if event.since.as_deref() != Some(last.rev.as_str()) {
        return Some(ChainBreak::SinceMismatch { expected: last.rev.clone(), got: event.since.clone() });
    }
    if event.prev_data.is_some_and(|prev| prev != last.data) {
        return Some(ChainBreak::PrevDataMismatch { expected: last.data, got: event.prev_data });
    }
    None
}

fn bad_op(op: &RepoOp, problem: &'static str) -> Rejection {
    Rejection::BadOp { path: op.path.clone(), problem }
}

/// Each op must be well-formed for its action; paths must be unique.
fn check_ops_shape(ops: &[RepoOp], policy: &Policy) -> Result<(), Rejection> {
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        syntax::validate_repo_path(&op.path).map_err(|_| bad_op(op, "invalid repo path"))?;
        let collection = op.path.split('/').next().unwrap_or_default();
        syntax::validate_nsid(collection).map_err(|_| bad_op(op, "collection is not an NSID"))?;
        if !seen.insert(op.path.as_str()) {
            return Err(bad_op(op, "more than one op for the same path"));
        }
        match op.action.as_str() {
            "create" => {
                if op.cid.is_none() {
                    return Err(bad_op(op, "create without cid"));
                }
                if op.prev.is_some() {
                    return Err(bad_op(op, "create with prev"));
                }
            }
            "update" => {
                if op.cid.is_none() {
                    return Err(bad_op(op, "update without cid"));
                }
                if op.prev.is_none() && !policy.lenient {
                    return Err(bad_op(op, "update without prev"));
                }
            }
            "delete" => {
                if op.cid.is_some() {
                    return Err(bad_op(op, "delete with cid"));
                }
                if op.prev.is_none() && !policy.lenient {
                    return Err(bad_op(op, "delete without prev"));
                }
            }
            _ => return Err(bad_op(op, "unknown action")),
        }
    }
    Ok(())
}

/// Record blocks that are present must be within size and well-formed CBOR.
fn check_records(ops: &[RepoOp], car: &car::Car) -> Result<(), Rejection> {
    for op in ops {
        let Some(cid) = op.cid else { continue };
        let Some(bytes) = car.get(&cid) else { continue };
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(Rejection::BadRecord {
                path: op.path.clone(),
                problem: format!("{} bytes", bytes.len()),
            });
        }
        if cid.codec() == cbor::DAG_CBOR {
            cbor::check(bytes, Limits::lenient())
                .map_err(|e| Rejection::BadRecord { path: op.path.clone(), problem: e.to_string() })?;
        }
    }
    Ok(())
}

/// The new tree must hold what the ops say: creates/updates at their CID, deletes gone.
fn check_ops_applied(
    tree: &mut Mst,
    ops: &[RepoOp],
    car: &car::Car,
    policy: &Policy,
) -> Result<(), Rejection> {
    for op in ops {
        let found = match tree.get(op.path.as_bytes(), car) {
            Ok(found) => found,
            // Pre-1.1 diffs may omit the nodes that prove a deletion.
            Err(MstError::MissingBlock(_)) if policy.lenient && op.action == "delete" => continue,
            Err(e) => return Err(Rejection::Mst(e)),
        };
        if found != op.cid {
            return Err(bad_op(op, "tree does not hold the op's cid"));
        }
    }
    Ok(())
}

/// Applies the ops backwards; the resulting root must be `prevData`.
fn invert(tree: &mut Mst, ops: &[RepoOp], car: &car::Car, prev_data: Cid) -> Result<(), Rejection> {
    for op in ops.iter().rev() {
        let key = op.path.as_bytes();
        let result = match op.action.as_str() {
            "create" => tree.remove(key, car).map(|old| old == op.cid),
            "update" => match op.prev {
                Some(prev) => tree.insert(key, prev, car).map(|old| old == op.cid),
                None => return Err(bad_op(op, "update without prev cannot be inverted")),
            },
            "delete" => match op.prev {
                Some(prev) => tree.insert(key, prev, car).map(|old| old.is_none()),
                None => return Err(bad_op(op, "delete without prev cannot be inverted")),
            },
            _ => return Err(bad_op(op, "unknown action")),
        };
        if !result.map_err(Rejection::Mst)? {
            return Err(bad_op(op, "inverting the op found an unexpected value"));
        }
    }
    let computed = tree.root_cid();
    if computed != prev_data {
        return Err(Rejection::InversionMismatch {
            expected: prev_data.to_string(),
            computed: computed.to_string(),
        });
    }
    Ok(())
}

fn verify_sync(
    event: &Sync,
    account: &AccountView,
    last: Option<&RepoState>,
    policy: &Policy,
    now_micros: u64,
) -> Result<Accepted, Rejection> {
    check_account(account)?;
    check_rev(&event.rev, last, policy, now_micros)?;
    let (_, commit, _) = open_commit(&event.blocks, MAX_SYNC_BLOCKS_BYTES, None)?;
    if commit.did != event.did {
        return Err(Rejection::FieldMismatch("did"));
    }
    if commit.rev != event.rev {
        return Err(Rejection::FieldMismatch("rev"));
    }
    verify_signature(&commit, account)?;
    Ok(Accepted { new_state: Some(RepoState { rev: commit.rev, data: commit.data }), chain_break: None })
}

/// Microseconds since the Unix epoch, for `verify_event`.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Account, IdentityEvent};

    fn identity(did: &str, handle: Option<&str>, time: &str) -> Event {
        Event::Identity(IdentityEvent {
            seq: 1,
            did: did.into(),
            time: time.into(),
            handle: handle.map(Into::into),
        })
    }

    fn account(status: Option<&str>) -> Event {
        let time = "2024-01-01T00:00:00.000Z".to_string();
        Event::Account(Account {
            seq: 1,
            did: DID.into(),
            time,
            active: false,
            status: status.map(Into::into),
        })
    }

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    const TIME: &str = "2024-01-01T00:00:00.000Z";

    #[test]
    fn fields_are_checked_before_anything_else() {
        assert!(check_fields(&identity(DID, Some("alice.example.com"), TIME)).is_ok());
        assert!(check_fields(&identity(DID, Some("handle.invalid"), TIME)).is_ok());
        let huge_did = format!("did:plc:{}", "a".repeat(1_000_000));
        assert_eq!(check_fields(&identity(&huge_did, None, TIME)).map_err(|r| r.reason()), Err("bad_did"));
        assert_eq!(check_fields(&identity("not-a-did", None, TIME)).map_err(|r| r.reason()), Err("bad_did"));
        let bad_handle = check_fields(&identity(DID, Some("not a handle"), TIME));
        assert_eq!(bad_handle, Err(Rejection::BadField { field: "handle", problem: "not a valid handle" }));
        let long_time = "2".repeat(1_000);
        assert_eq!(check_fields(&identity(DID, None, &long_time)).map_err(|r| r.reason()), Err("bad_field"));
        assert!(check_fields(&account(Some("takendown"))).is_ok());
        assert!(check_fields(&account(None)).is_ok());
        assert!(check_fields(&account(Some(&"x".repeat(65)))).is_err());
        assert!(check_fields(&account(Some("deleted; DROP TABLE"))).is_err());
        assert!(check_fields(&account(Some(""))).is_err());
    }

    #[test]
    fn account_and_identity_events_need_the_accounts_own_host() {
        use crate::crypto::{Curve, SigningKey};
        let key = SigningKey::from_seed(Curve::K256, b"verdict test").public_key();
        let doc = Identity::new(DID.into(), None, Some(key), Some("https://pds.example.com".into()));
        let policy = Policy::default();
        let view = |identity, source, known_on_source| AccountView {
            identity,
            active: true,
            source_host: Some(source),
            known_on_source,
        };
        for event in [identity(DID, None, TIME), account(Some("deactivated"))] {
            assert!(
                verify_event(&event, &view(Some(&doc), "pds.example.com", false), None, &policy, 0).is_ok()
            );
            let foreign =
                verify_event(&event, &view(Some(&doc), "evil.example.com", false), None, &policy, 0);
            assert_eq!(foreign.map_err(|r| r.reason()), Err("wrong_host"));
            let unresolved = verify_event(&event, &view(None, "evil.example.com", false), None, &policy, 0);
            assert_eq!(unresolved.map_err(|r| r.reason()), Err("no_identity"));
            // A tombstoned DID's last events still come through from the host that served it.
            assert!(verify_event(&event, &view(None, "pds.example.com", true), None, &policy, 0).is_ok());
        }
    }

    #[test]
    fn op_collections_must_be_nsids() {
        let op = |path: &str| RepoOp { action: "delete".into(), path: path.into(), cid: None, prev: None };
        let policy = Policy { lenient: true, ..Policy::default() };
        assert!(check_ops_shape(&[op("app.bsky.feed.post/3l3qo2vutsw2b")], &policy).is_ok());
        let refused = check_ops_shape(&[op("nodots/3l3qo2vutsw2b")], &policy);
        assert_eq!(
            refused.map_err(|r| r.to_string()),
            Err("op nodots/3l3qo2vutsw2b: collection is not an NSID".into())
        );
    }

    #[test]
    fn since_must_be_a_tid() {
        let commit = Commit {
            seq: 1,
            rebase: false,
            too_big: false,
            repo: DID.into(),
            commit: Cid::default(),
            rev: "3l3qo2vutsw2b".into(),
            since: Some("yesterday".into()),
            blocks: Vec::new(),
            ops: Vec::new(),
            blobs: Vec::new(),
            prev_data: None,
            time: TIME.into(),
        };
        let checked = check_fields(&Event::Commit(commit));
        assert_eq!(checked, Err(Rejection::BadField { field: "since", problem: "not a TID" }));
    }
}
