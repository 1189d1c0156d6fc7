//! Scenario files: a list of accounts and a sequence of firehose frames in atproto
//! JSON, each with an expected verdict. This is the format of indigo's relay test
//! scenarios; `relay verify` reads it, and the test suite replays the upstream files.

use super::tracker::{AccountStatus, Drop, Tracker};
use super::verdict::{now_micros, Accepted, Policy};
use crate::crypto::PublicKey;
use crate::frame::{self, Event};
use crate::identity::Identity;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Scenario {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub lenient: bool,
    #[serde(default)]
    pub accounts: Vec<ScenarioAccount>,
    pub messages: Vec<ScenarioMessage>,
}

#[derive(Debug, Deserialize)]
pub struct ScenarioAccount {
    pub identity: ScenarioIdentity,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ScenarioIdentity {
    pub did: String,
    #[serde(default)]
    pub handle: Option<String>,
    #[serde(default)]
    pub services: serde_json::Value,
    #[serde(default)]
    pub keys: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct ScenarioMessage {
    pub frame: ScenarioFrame,
    #[serde(default)]
    pub drop: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ScenarioFrame {
    pub header: serde_json::Value,
    pub body: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("account {did}: {problem}")]
    Account { did: String, problem: String },
}

/// The result of one message.
#[derive(Debug)]
pub struct MessageResult {
    pub index: usize,
    pub kind: String,
    pub outcome: Result<Accepted, Drop>,
    pub expected_drop: Option<bool>,
}

impl MessageResult {
    pub fn dropped(&self) -> bool {
        self.outcome.is_err()
    }

    /// False when the scenario states a verdict and ours differs.
    pub fn as_expected(&self) -> bool {
        self.expected_drop.is_none_or(|drop| drop == self.dropped())
    }
}

fn identity_of(account: &ScenarioAccount) -> Result<Identity, ScenarioError> {
    let id = &account.identity;
    let fail = |problem: String| ScenarioError::Account { did: id.did.clone(), problem };
    let multibase = id.keys["atproto"]["publicKeyMultibase"].as_str();
    let signing_key = match multibase {
        Some(m) => Some(PublicKey::from_multikey(m).map_err(|e| fail(e.to_string()))?),
        None => None,
    };
    let pds_endpoint = id.services["atproto_pds"]["url"].as_str().map(str::to_string);
    Ok(Identity::new(id.did.clone(), id.handle.clone(), signing_key, pds_endpoint))
}

impl Scenario {
    pub fn parse(json: &[u8]) -> Result<Scenario, ScenarioError> {
        Ok(serde_json::from_slice(json)?)
    }

    /// A tracker loaded with the scenario's accounts and validation mode.
    pub fn tracker(&self) -> Result<Tracker, ScenarioError> {
        let mut tracker = Tracker::new(Policy { lenient: self.lenient, ..Policy::default() });
        for account in &self.accounts {
            let identity = identity_of(account)?;
            let status = account.status.clone().unwrap_or_else(|| "active".into());
            let active = status == "active";
            tracker.statuses.insert(identity.did.clone(), AccountStatus { active, status: Some(status) });
            tracker.identities.insert(identity.did.clone(), identity);
        }
        Ok(tracker)
    }

    /// Replays every message from one upstream host through a fresh tracker.
    pub fn run(&self) -> Result<Vec<MessageResult>, ScenarioError> {
        let mut tracker = self.tracker()?;
        let now = now_micros();
        let mut results = Vec::with_capacity(self.messages.len());
        for (index, message) in self.messages.iter().enumerate() {
            let decoded = frame::event_from_json(&message.frame.header, &message.frame.body);
            let (kind, outcome) = match decoded {
                Ok(event) => (event.type_name().to_string(), tracker.process("upstream", &event, now)),
                Err(e) => ("undecodable".to_string(), Err(Drop::Rejected(frame_rejection(e)))),
            };
            results.push(MessageResult { index, kind, outcome, expected_drop: message.drop });
        }
        Ok(results)
    }
}

fn frame_rejection(error: frame::FrameError) -> super::verdict::Rejection {
    super::verdict::Rejection::NotRelayable(format!("undecodable frame ({error})"))
}

/// Decodes a scenario frame (helper for tests).
pub fn decode_message(message: &ScenarioMessage) -> Result<Event, frame::FrameError> {
    frame::event_from_json(&message.frame.header, &message.frame.body)
}
