//! Per-account and per-host state around the verdict: upstream sequence order,
//! account status from `#account` events and local takedowns, and the last
//! accepted `(rev, data)` for each DID. The daemon keeps this state in its store;
//! this in-memory form runs the scenario files and `relay verify`.

use super::verdict::{verify_event, Accepted, AccountView, Policy, Rejection, RepoState};
use crate::frame::Event;
use crate::identity::Identity;
use std::collections::HashMap;

/// Why the tracker dropped an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("upstream seq {got} is not above {last} on this connection")]
    SeqNotIncreasing { last: i64, got: i64 },
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

impl Drop {
    pub fn reason(&self) -> &'static str {
        match self {
            Drop::SeqNotIncreasing { .. } => "seq_not_increasing",
            Drop::Rejected(r) => r.reason(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    pub active: bool,
    pub status: Option<String>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    pub policy: Policy,
    pub identities: HashMap<String, Identity>,
    pub statuses: HashMap<String, AccountStatus>,
    pub repos: HashMap<String, RepoState>,
    pub host_seq: HashMap<String, i64>,
    /// Check that events come from the account's PDS host.
    pub check_host_authority: bool,
}

impl Tracker {
    pub fn new(policy: Policy) -> Tracker {
        Tracker { policy, ..Tracker::default() }
    }

    /// Processes one event received from `host`; returns what was accepted or why it was dropped.
    pub fn process(&mut self, host: &str, event: &Event, now_micros: u64) -> Result<Accepted, Drop> {
        if let Some(seq) = event.seq() {
            let last = self.host_seq.get(host).copied();
            if let Some(last) = last.filter(|last| seq <= *last) {
                return Err(Drop::SeqNotIncreasing { last, got: seq });
            }
            self.host_seq.insert(host.to_string(), seq);
        }
        let did = event.did().unwrap_or_default().to_string();
        let active = self.statuses.get(&did).is_none_or(|s| s.active);
        let view = AccountView {
            identity: self.identities.get(&did),
            active,
            source_host: self.check_host_authority.then_some(host),
            known_on_source: false,
        };
        let accepted = verify_event(event, &view, self.repos.get(&did), &self.policy, now_micros)?;
        if let Event::Account(account) = event {
            let status = AccountStatus { active: account.active, status: account.status.clone() };
            self.statuses.insert(did.clone(), status);
        }
        if let Some(state) = &accepted.new_state {
            self.repos.insert(did, state.clone());
        }
        Ok(accepted)
    }
}
