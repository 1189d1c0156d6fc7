//! The façade the HTTP handlers (XRPC, admin, health) hold: the handles of the stages they
//! answer about, put together by `wiring::start`. The stages themselves never see it: each
//! gets only its own handles from the wiring function.

use crate::accounts::Accounts;
use crate::atproto::frame::{Account as AccountEvent, Event};
use crate::collections::Collections;
use crate::config::ServeConfig;
use crate::coverage::selfcheck::CoverageStatus;
use crate::fanout::Fanout;
use crate::identity::Resolver;
use crate::ingest::HostRegistry;
use crate::metrics::Metrics;
use crate::progress::Activity;
use crate::sequence::{Outgoing, SequencerInput, SequencerReader};
use crate::storage::{AccountStatus, Store, StoreError};
use crate::validate::stage::ValidationStage;
use std::sync::Arc;

pub struct Relay {
    pub config: Arc<ServeConfig>,
    pub store: Store,
    pub resolver: Arc<Resolver>,
    pub metrics: Metrics,
    /// Ingest: the running subscriptions and host admission.
    pub hosts: Arc<HostRegistry>,
    pub accounts: Arc<Accounts>,
    /// The validation stage's intake (admin re-syncs go through it).
    pub validation: ValidationStage,
    /// The sequencer's reader end (head, replay, write failures) and writer end (takedowns).
    pub sequencer: SequencerReader,
    pub sequencer_input: SequencerInput,
    pub fanout: Arc<Fanout>,
    /// The collection directory; `None` when turned off.
    pub collections: Option<Arc<Collections>>,
    /// What the coverage self-check measured (empty without `--coverage-reference`).
    pub coverage: Arc<CoverageStatus>,
    pub activity: Arc<Activity>,
    pub(crate) sibling_client: reqwest::Client,
}

impl Relay {
    /// The HTTP client for forwarding to sibling relays.
    pub fn sibling_client(&self) -> &reqwest::Client {
        &self.sibling_client
    }

    /// Takes an account down (or restores it): stores the status, purges or not, emits `#account`.
    pub async fn set_takedown(&self, did: &str, takedown: bool) -> Result<bool, StoreError> {
        let status = if takedown { AccountStatus::Takendown } else { AccountStatus::Active };
        if !self.store.set_local_status(did, &status).await? {
            return Ok(false);
        }
        self.accounts.set_local_status(did, status.clone());
        let account = self.store.account(did).await?.ok_or(StoreError::Sql(sqlx::Error::RowNotFound))?;
        if takedown {
            // Everything of this DID before the takedown event leaves the replay window.
            let mark = self.sequencer.current_head() + 1;
            self.store.save_purge(did, mark as i64).await?;
            self.sequencer.purges.write().unwrap_or_else(|p| p.into_inner()).insert(did.to_string(), mark);
        }
        let event = Event::Account(AccountEvent {
            seq: 0,
            did: did.to_string(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            active: account.is_active(),
            status: (!account.is_active()).then(|| account.effective_status().to_string()),
        });
        let outgoing = Outgoing { did: did.to_string(), event, in_flight: None, state: None };
        if self.sequencer_input.send(outgoing).await.is_err() {
            tracing::warn!(%did, "shutting down: the #account event of a takedown change was not sequenced");
        }
        Ok(true)
    }

    /// Readiness: relaying for real, not just up.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = self.sequencer.write_failure() {
            return Err(reason);
        }
        let total = self.hosts.running_count();
        let connected = self.hosts.connected();
        if total == 0 {
            return Err("no upstream hosts configured".into());
        }
        if connected == 0 {
            return Err("no upstream host is connected".into());
        }
        let share = connected as f64 / total as f64;
        if share < self.config.ready_min_connected_share {
            return Err(format!("only {connected} of {total} hosts connected"));
        }
        let silence = self.config.ready_max_silence;
        if !silence.is_zero()
            && self.activity.uptime() > silence
            && self.activity.silent_for() > silence.as_secs()
        {
            return Err(format!("no event accepted for more than {}s", silence.as_secs()));
        }
        if let Some(reason) = self.coverage.failing(self.config.coverage_threshold) {
            return Err(reason);
        }
        Ok(())
    }
}
