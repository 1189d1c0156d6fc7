//! Host and account status values, as stored in SQL and shown by the XRPC and admin APIs.
//! Enums instead of string literals, so a misspelt status fails to compile and every
//! `match` names each case.

use std::fmt;

/// What the relay does with an upstream host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStatus {
    /// Subscribed and sending.
    Active,
    /// Subscribed, silent for longer than `--idle-after`; its next event makes it active.
    Idle,
    /// Failed repeatedly; still retried on a slow schedule.
    Offline,
    /// Rate-limited by an operator (listed by `listHosts`, shown as such).
    Throttled,
    /// Banned by an operator: never subscribed, refused by requestCrawl.
    Banned,
}

impl HostStatus {
    /// Every status, in the order the host gauges are written.
    pub const ALL: [HostStatus; 5] = [
        HostStatus::Active,
        HostStatus::Idle,
        HostStatus::Offline,
        HostStatus::Throttled,
        HostStatus::Banned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Active => "active",
            HostStatus::Idle => "idle",
            HostStatus::Offline => "offline",
            HostStatus::Throttled => "throttled",
            HostStatus::Banned => "banned",
        }
    }

    /// The stored text; `None` for a value this relay never writes.
    pub fn parse(text: &str) -> Option<HostStatus> {
        HostStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Whether the relay keeps a subscription open to a host with this status.
    pub fn is_subscribed(self) -> bool {
        matches!(self, HostStatus::Active | HostStatus::Idle | HostStatus::Offline)
    }

    /// Whether the host's data can be reached now (neither banned nor failing).
    pub fn is_reachable(self) -> bool {
        !matches!(self, HostStatus::Banned | HostStatus::Offline)
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for HostStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An account's status: the relay's own (`active` or `takendown`) or the upstream's, as
/// `#account` events spell it. Upstreams may send tokens this relay does not know yet
/// (the lexicon's list is open): those are kept as they came (`Other`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    Active,
    Takendown,
    Suspended,
    Deleted,
    Deactivated,
    Desynchronized,
    Throttled,
    Other(String),
}

impl AccountStatus {
    const KNOWN: [AccountStatus; 7] = [
        AccountStatus::Active,
        AccountStatus::Takendown,
        AccountStatus::Suspended,
        AccountStatus::Deleted,
        AccountStatus::Deactivated,
        AccountStatus::Desynchronized,
        AccountStatus::Throttled,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Takendown => "takendown",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Deleted => "deleted",
            AccountStatus::Deactivated => "deactivated",
            AccountStatus::Desynchronized => "desynchronized",
            AccountStatus::Throttled => "throttled",
            AccountStatus::Other(token) => token,
        }
    }

    /// The status a token names (never fails: unknown tokens are `Other`).
    pub fn from_token(token: &str) -> AccountStatus {
        AccountStatus::KNOWN
            .into_iter()
            .find(|status| status.as_str() == token)
            .unwrap_or_else(|| AccountStatus::Other(token.to_string()))
    }

    /// The status an `#account` event sets: active, or the status it names
    /// (`deactivated` when an inactive account names none).
    pub fn from_event(active: bool, status: Option<&str>) -> AccountStatus {
        match (active, status) {
            (true, _) => AccountStatus::Active,
            (false, Some(token)) => AccountStatus::from_token(token),
            (false, None) => AccountStatus::Deactivated,
        }
    }

    pub fn is_active(&self) -> bool {
        *self == AccountStatus::Active
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for AccountStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_statuses_round_trip_and_unknown_text_is_refused() {
        for status in HostStatus::ALL {
            assert_eq!(HostStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(HostStatus::parse("Active"), None);
        assert!(HostStatus::Idle.is_subscribed() && !HostStatus::Banned.is_subscribed());
        assert!(!HostStatus::Offline.is_reachable() && HostStatus::Throttled.is_reachable());
    }

    #[test]
    fn account_statuses_keep_unknown_tokens() {
        assert_eq!(AccountStatus::from_token("takendown"), AccountStatus::Takendown);
        assert_eq!(AccountStatus::from_token("hibernating").as_str(), "hibernating");
        assert_eq!(AccountStatus::from_event(false, None), AccountStatus::Deactivated);
        assert_eq!(AccountStatus::from_event(true, Some("deleted")), AccountStatus::Active);
        assert_eq!(AccountStatus::from_event(false, Some("deleted")), AccountStatus::Deleted);
    }
}
