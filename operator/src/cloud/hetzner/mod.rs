//! Hetzner Cloud: one server per Relay through the `hcloud` crate.
//!
//! - `api`: the narrow `HetznerApi` trait and the operator's own types;
//! - `client`: its implementation over `hcloud` (base URL, timeout, classification);
//! - `budget`: the operator-wide rate budget, API health and call counters;
//! - `naming`: server name, ownership labels, the adopt rule, the lookup order;
//! - `lifecycle`: find/create/adopt/delete and action polling over any `HetznerApi`;
//! - `error`: `CloudError` and how crate errors are classified.
//!
//! docs/hetzner.md explains the design; the e2e fake (e2e/src/hcloud_fake) is what the
//! tests talk to.

pub mod api;
pub mod budget;
pub mod client;
pub mod error;
pub mod lifecycle;
pub mod naming;

pub use api::{
    missing_names, ActionInfo, ActionStatus, CreatedServer, Firewall, FirewallProtocol, FirewallRule,
    FirewallSpec, HetznerApi, Network, ServerInfo, ServerSpec, ServerStatus, SshKey,
};
pub use budget::{ApiHealth, BudgetConfig, CallCounts, Op, RateBudget};
pub use client::{ClientSettings, HcloudClient, HETZNER_CLOUD_API};
pub use error::CloudError;
pub use lifecycle::{Ensured, LifecycleError, Origin, PollPolicy};
pub use naming::Owner;
