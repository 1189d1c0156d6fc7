//! Validate stage: the Sync 1.1 verdict on each event, and the per-account state it needs.

pub mod scenario;
pub mod stage;
pub mod tracker;
pub mod verdict;

pub use tracker::{Drop, Tracker};
pub use verdict::{verify_event, Accepted, AccountView, ChainBreak, Policy, Rejection, RepoState};
