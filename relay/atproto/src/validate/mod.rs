//! The Sync 1.1 verdict on one event, and a tracker that applies it to a stream of events
//! (what `relay verify` and the scenario tests run); the daemon's worker pool is in `relay`.

pub mod scenario;
pub mod tracker;
pub mod verdict;

pub use tracker::{Drop, Tracker};
pub use verdict::{verify_event, Accepted, AccountView, ChainBreak, Policy, Rejection, RepoState};
