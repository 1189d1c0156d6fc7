//! Validate stage: the Sync 1.1 verdict on each event, and the per-account state it needs.

pub mod stage;

/// The verdict, the tracker and scenario files live in the protocol core crate.
pub use relay_atproto::validate::{scenario, tracker, verdict};

pub use tracker::{Drop, Tracker};
pub use verdict::{verify_event, Accepted, AccountView, ChainBreak, Policy, Rejection, RepoState};
