//! `NodeProvisioned` and `status.node`: what the node subsystem (`controller/node.rs`)
//! found, as a condition with a reason per state, and how it shapes `Ready`.
//!
//! Pure: the subsystem decides the state, this file words it. Until the node is Ready
//! the relay cannot run (its StatefulSet waits at zero replicas), so `Ready` says why.

use crate::crd::conditions::{self as cond, Desired, Status};
use crate::crd::node::NodeStatus;
use crate::crd::RelayStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::time::Duration;

/// Where the relay's node stands, or why the operator cannot tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// The create action runs (`timed_out`: longer than the create timeout).
    Creating { server: String, timed_out: bool },
    /// The server exists but is not `running` yet.
    WaitingForBoot { server: String, server_status: String, timed_out: bool },
    /// The server runs; no Ready Node with its name (and providerID) yet.
    WaitingForJoin { node: String, joined: bool, timed_out: bool },
    /// The Node has joined and is Ready: the relay is scheduled there.
    Ready { node: String },
    /// The Node joined once but is not Ready now (the relay stays pinned to it).
    NodeNotReady { node: String },
    /// The token Secret (or the join token Secret) is missing.
    SecretMissing { message: String },
    /// Hetzner refused the token (401/403): nothing is retried until it changes.
    TokenRejected { message: String },
    /// 429 or the operator's own budget is spent.
    RateLimited { retry_after: Duration },
    /// Timeouts, resets, 5xx.
    Unreachable { message: String },
    /// No capacity for this type in this location right now.
    ResourceUnavailable { message: String },
    /// A server with our name (or the status id) that is not ours.
    NotOwned { message: String },
    /// The create action failed, or another error only a person can look into.
    Failed { reason: &'static str, message: String },
}

/// The `NodeProvisioned` condition for a state.
pub fn node_provisioned(state: &NodeState) -> Desired {
    let (status, reason, message) = match state {
        NodeState::Creating { server, timed_out: false } => {
            (Status::False, "Creating", format!("creating Hetzner server {server}"))
        }
        NodeState::Creating { server, timed_out: true } => (
            Status::False,
            "CreateTimeout",
            format!("Hetzner server {server}: the create action did not finish within the create timeout"),
        ),
        NodeState::WaitingForBoot { server, server_status, timed_out: false } => {
            (Status::False, "WaitingForBoot", format!("Hetzner server {server} is {server_status}"))
        }
        NodeState::WaitingForBoot { server, server_status, timed_out: true } => (
            Status::False,
            "BootTimeout",
            format!("Hetzner server {server} is still {server_status}, past the boot timeout"),
        ),
        NodeState::WaitingForJoin { node, joined, timed_out } => {
            let what = if *joined {
                format!("Node {node} has joined but is not Ready")
            } else {
                format!("waiting for the server to join the cluster as Node {node}")
            };
            if *timed_out {
                (Status::False, "JoinTimeout", format!("{what}, past the join timeout (check cloud-init on the server and the join token)"))
            } else {
                (Status::False, "WaitingForJoin", what)
            }
        }
        NodeState::Ready { node } => (Status::True, "NodeReady", format!("Node {node} is Ready")),
        NodeState::NodeNotReady { node } => {
            (Status::False, "NodeNotReady", format!("Node {node} is not Ready"))
        }
        NodeState::SecretMissing { message } => (Status::False, "SecretNotFound", message.clone()),
        NodeState::TokenRejected { message } => (
            Status::False,
            "HetznerTokenRejected",
            format!("the Hetzner API refused the token (no retries until the Secret changes or 10 minutes pass): {message}"),
        ),
        NodeState::RateLimited { retry_after } => (
            Status::False,
            "HetznerAPIRateLimited",
            format!("the Hetzner API rate limit is reached; next try in {}s", retry_after.as_secs()),
        ),
        NodeState::Unreachable { message } => {
            (Status::False, "HetznerAPIUnreachable", message.clone())
        }
        NodeState::ResourceUnavailable { message } => {
            (Status::False, "ResourceUnavailable", message.clone())
        }
        NodeState::NotOwned { message } => (Status::False, "ServerNotOwned", message.clone()),
        NodeState::Failed { reason, message } => (Status::False, *reason, message.clone()),
    };
    Desired::new(cond::NODE_PROVISIONED, status, reason, message)
}

/// Puts the node subsystem's findings into a computed status: `status.node`, the
/// `NodeProvisioned` condition (transition time kept while its status stays), and,
/// while the node is not Ready, `Ready=False` with the node's reason (the workload
/// alone would look available: it waits at zero replicas).
pub fn apply(
    status: &mut RelayStatus,
    stored: &[Condition],
    node: NodeStatus,
    state: &NodeState,
    scheduled: bool,
    generation: i64,
    now: &Time,
) {
    let provisioned = node_provisioned(state);
    let mut wanted = vec![provisioned.clone()];
    if !scheduled {
        wanted.push(Desired::new(
            cond::READY,
            Status::False,
            provisioned.reason,
            provisioned.message.clone(),
        ));
        wanted.push(Desired::new(
            cond::RECONCILING,
            Status::True,
            provisioned.reason,
            provisioned.message.clone(),
        ));
    }
    // Transition times come from what is stored, not from this reconcile's first draft.
    let existing: Vec<Condition> =
        stored.iter().filter(|c| wanted.iter().any(|w| w.type_ == c.type_)).cloned().collect();
    let merged = cond::merge(&existing, &wanted, generation, now);
    for condition in merged {
        match status.conditions.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(slot) => *slot = condition,
            None => status.conditions.push(condition),
        }
    }
    status.node = Some(node);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_its_reason() {
        let server = "relay-eu-6f1c2a9e".to_string();
        let rows: Vec<(NodeState, Status, &str)> = vec![
            (NodeState::Creating { server: server.clone(), timed_out: false }, Status::False, "Creating"),
            (NodeState::Creating { server: server.clone(), timed_out: true }, Status::False, "CreateTimeout"),
            (
                NodeState::WaitingForBoot {
                    server: server.clone(),
                    server_status: "starting".into(),
                    timed_out: false,
                },
                Status::False,
                "WaitingForBoot",
            ),
            (
                NodeState::WaitingForBoot {
                    server: server.clone(),
                    server_status: "starting".into(),
                    timed_out: true,
                },
                Status::False,
                "BootTimeout",
            ),
            (
                NodeState::WaitingForJoin { node: server.clone(), joined: false, timed_out: false },
                Status::False,
                "WaitingForJoin",
            ),
            (
                NodeState::WaitingForJoin { node: server.clone(), joined: true, timed_out: true },
                Status::False,
                "JoinTimeout",
            ),
            (NodeState::Ready { node: server.clone() }, Status::True, "NodeReady"),
            (
                NodeState::TokenRejected { message: "unauthorized".into() },
                Status::False,
                "HetznerTokenRejected",
            ),
            (
                NodeState::RateLimited { retry_after: Duration::from_secs(60) },
                Status::False,
                "HetznerAPIRateLimited",
            ),
            (NodeState::Unreachable { message: "503".into() }, Status::False, "HetznerAPIUnreachable"),
        ];
        for (state, status, reason) in rows {
            let got = node_provisioned(&state);
            assert_eq!(
                (got.type_, got.status, got.reason),
                (cond::NODE_PROVISIONED, status, reason),
                "{state:?}"
            );
        }
        let timed_out =
            node_provisioned(&NodeState::WaitingForJoin { node: server, joined: false, timed_out: true });
        assert!(timed_out.message.contains("join timeout"), "{}", timed_out.message);
    }

    fn time(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn ready_says_why_until_the_node_is_scheduled() {
        let stored = cond::merge(
            &[],
            &[Desired::new(cond::READY, Status::False, "WaitingForJoin", "waiting")],
            1,
            &time(5),
        );
        // The first draft (from the workload at zero replicas) would say Ready.
        let mut status = RelayStatus {
            conditions: cond::merge(
                &[],
                &[Desired::new(cond::READY, Status::True, "RelayReady", "relay serving")],
                1,
                &time(10),
            ),
            ..RelayStatus::default()
        };
        let waiting = NodeState::WaitingForJoin { node: "n".into(), joined: false, timed_out: false };
        apply(&mut status, &stored, NodeStatus::default(), &waiting, false, 1, &time(20));
        let ready = cond::find(&status.conditions, cond::READY).expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "WaitingForJoin"));
        assert_eq!(ready.last_transition_time, time(5), "kept from the stored condition");
        let node = cond::find(&status.conditions, cond::NODE_PROVISIONED).expect("NodeProvisioned");
        assert_eq!(node.last_transition_time, time(20));

        // Scheduled: Ready is left to the workload; NodeProvisioned flips to True.
        let mut later = RelayStatus {
            conditions: cond::merge(
                &status.conditions,
                &[Desired::new(cond::READY, Status::True, "RelayReady", "relay serving")],
                1,
                &time(30),
            ),
            ..RelayStatus::default()
        };
        later
            .conditions
            .extend(status.conditions.iter().filter(|c| c.type_ == cond::NODE_PROVISIONED).cloned());
        let stored = status.conditions.clone();
        apply(
            &mut later,
            &stored,
            NodeStatus::default(),
            &NodeState::Ready { node: "n".into() },
            true,
            1,
            &time(40),
        );
        let ready = cond::find(&later.conditions, cond::READY).expect("Ready");
        assert_eq!(ready.status, "True");
        let node = cond::find(&later.conditions, cond::NODE_PROVISIONED).expect("NodeProvisioned");
        assert_eq!((node.status.as_str(), node.last_transition_time.clone()), ("True", time(40)));
    }
}
