//! Validate: checks the schema and CEL cannot express (or that an older API server
//! might not enforce) and turns a `Relay` into a `ValidatedRelay`. Pure.

use crate::crd::{DatabaseType, Relay, RelaySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

/// Longest Relay name: the StatefulSet's pods carry a `controller-revision-hash`
/// label of `<name>-<10 chars>` that must fit in 63 characters.
pub const MAX_NAME_LEN: usize = 52;

/// A Relay whose spec has passed every check, with the identity its children need.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedRelay {
    pub name: String,
    pub namespace: String,
    pub generation: i64,
    pub owner: OwnerReference,
    pub spec: RelaySpec,
}

/// Why a spec cannot be reconciled. The message is shown in the `Stalled` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

pub fn validate(relay: &Relay) -> Result<ValidatedRelay, InvalidSpec> {
    let name = relay.metadata.name.clone().ok_or_else(|| InvalidSpec("metadata.name is missing".into()))?;
    let namespace = relay
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| InvalidSpec("metadata.namespace is missing".into()))?;
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidSpec(format!(
            "metadata.name is {} characters; a Relay name may have at most {MAX_NAME_LEN}",
            name.len()
        )));
    }
    let owner =
        relay.controller_owner_ref(&()).ok_or_else(|| InvalidSpec("the Relay has no uid yet".into()))?;
    check_spec(&relay.spec)?;
    check_coverage(&name, &relay.spec)?;
    Ok(ValidatedRelay {
        name,
        namespace,
        generation: relay.metadata.generation.unwrap_or(0),
        owner,
        spec: relay.spec.clone(),
    })
}

fn check_spec(spec: &RelaySpec) -> Result<(), InvalidSpec> {
    if spec.image.trim().is_empty() {
        return Err(InvalidSpec("spec.image must not be empty".into()));
    }
    if spec.ports.public == spec.ports.internal {
        return Err(InvalidSpec("ports.public and ports.internal must be different ports".into()));
    }
    for (field, pair) in [("memory", &spec.resources.memory), ("cpu", &spec.resources.cpu)] {
        let request = pair.request.as_deref().map(|q| parse_quantity(field, "request", q)).transpose()?;
        let limit = pair.limit.as_deref().map(|q| parse_quantity(field, "limit", q)).transpose()?;
        if let (Some(request), Some(limit)) = (request, limit) {
            if limit < request {
                return Err(InvalidSpec(format!(
                    "resources.{field}.limit must be greater than or equal to resources.{field}.request"
                )));
            }
        }
    }
    parse_quantity("storage", "size", &spec.storage.size)?;
    match (spec.storage.database.kind, &spec.storage.database.url_secret_ref) {
        (DatabaseType::Postgres, None) => {
            return Err(InvalidSpec("storage.database.urlSecretRef is required for Postgres".into()))
        }
        (DatabaseType::Embedded, Some(_)) => {
            return Err(InvalidSpec("storage.database.urlSecretRef is only allowed for Postgres".into()))
        }
        _ => {}
    }
    if let Some(level) = &spec.tunables.log_level {
        if level.chars().any(char::is_whitespace) {
            return Err(InvalidSpec("tunables.logLevel must not contain whitespace".into()));
        }
    }
    if spec.tunables.trusted_domains.iter().any(|d| d.trim().is_empty() || d.contains(',')) {
        return Err(InvalidSpec(
            "tunables.trustedDomains entries must be non-empty and contain no commas".into(),
        ));
    }
    Ok(())
}

/// What the schema cannot say about `spec.coverage`: a schedule that parses and fires,
/// references that are not this Relay itself and not repeated.
fn check_coverage(name: &str, spec: &RelaySpec) -> Result<(), InvalidSpec> {
    let Some(coverage) = &spec.coverage else { return Ok(()) };
    let schedule = crate::cron::Schedule::parse(&coverage.schedule)
        .map_err(|why| InvalidSpec(format!("coverage.schedule: {why}")))?;
    if schedule.next_after(jiff::Timestamp::UNIX_EPOCH).is_none() {
        return Err(InvalidSpec(format!("coverage.schedule {:?} never fires", coverage.schedule)));
    }
    if coverage.references.is_empty() || coverage.references.len() > crate::crd::coverage::MAX_REFERENCES {
        return Err(InvalidSpec(format!(
            "coverage.references needs 1 to {} references",
            crate::crd::coverage::MAX_REFERENCES
        )));
    }
    let mut seen = Vec::new();
    for reference in &coverage.references {
        let key = match (&reference.relay, &reference.url) {
            (Some(relay), None) if relay == name => {
                return Err(InvalidSpec("coverage.references may not name this Relay itself".into()))
            }
            (Some(relay), None) => format!("relay:{relay}"),
            (None, Some(url)) => format!("url:{url}"),
            _ => return Err(InvalidSpec("a coverage reference names exactly one of relay and url".into())),
        };
        if seen.contains(&key) {
            return Err(InvalidSpec(format!("coverage.references lists {key} twice")));
        }
        seen.push(key);
    }
    if coverage.critical_below_basis_points > coverage.degraded_below_basis_points {
        return Err(InvalidSpec(
            "coverage.criticalBelowBasisPoints must not be above coverage.degradedBelowBasisPoints".into(),
        ));
    }
    Ok(())
}

/// Parses a Kubernetes quantity into a comparable value (milli-units for CPU-like
/// decimals, bytes for binary suffixes; both are exact integers at this scale).
pub fn parse_quantity(field: &str, part: &str, text: &str) -> Result<f64, InvalidSpec> {
    let bad = || InvalidSpec(format!("resources.{field}.{part} {text:?} is not a Kubernetes quantity"));
    let text = text.trim();
    let split =
        text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    if value < 0.0 {
        return Err(bad());
    }
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return Err(bad()),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::relay_from_yaml;

    #[test]
    fn minimal_relay_is_valid() {
        let relay = relay_from_yaml(include_str!("../../tests/fixtures/minimal.yaml"));
        let validated = validate(&relay).expect("valid");
        assert_eq!(validated.name, "demo");
        assert_eq!(validated.owner.kind, "Relay");
        assert_eq!(validated.owner.controller, Some(true));
    }

    #[test]
    fn limit_below_request_is_rejected() {
        let mut relay = relay_from_yaml(include_str!("../../tests/fixtures/minimal.yaml"));
        relay.spec.resources.memory.request = Some("2Gi".into());
        relay.spec.resources.memory.limit = Some("1500Mi".into());
        let error = validate(&relay).unwrap_err();
        assert!(error.0.contains("resources.memory.limit"), "{error}");
    }

    #[test]
    fn long_names_are_rejected() {
        let mut relay = relay_from_yaml(include_str!("../../tests/fixtures/minimal.yaml"));
        relay.metadata.name = Some("r".repeat(MAX_NAME_LEN + 1));
        assert!(validate(&relay).unwrap_err().0.contains("at most 52"));
    }

    #[test]
    fn coverage_specs_the_schema_cannot_judge() {
        let base = relay_from_yaml(include_str!("../../tests/fixtures/minimal.yaml"));
        let with = |coverage: serde_json::Value| {
            let mut relay = base.clone();
            relay.spec.coverage = Some(serde_json::from_value(coverage).expect("coverage spec"));
            validate(&relay).err().map(|e| e.0)
        };
        let url = serde_json::json!({"url": "wss://bsky.network"});
        assert_eq!(with(serde_json::json!({"references": [url]})), None);
        let cases = [
            (serde_json::json!({"references": [url], "schedule": "0 0 30 2 *"}), "never fires"),
            (serde_json::json!({"references": [url], "schedule": "61 * * * *"}), "coverage.schedule: minute"),
            (serde_json::json!({"references": [{"relay": "demo"}]}), "this Relay itself"),
            (serde_json::json!({"references": [url, url]}), "twice"),
            (serde_json::json!({"references": []}), "1 to 16"),
            (serde_json::json!({"references": [url], "criticalBelowBasisPoints": 9500}), "criticalBelow"),
        ];
        for (coverage, says) in cases {
            let error = with(coverage.clone()).unwrap_or_default();
            assert!(error.contains(says), "{coverage}: {error:?}");
        }
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        assert!(parse_quantity("m", "l", "1Gi").unwrap() > parse_quantity("m", "r", "1000Mi").unwrap());
        assert_eq!(parse_quantity("c", "r", "500m").unwrap(), 0.5);
        assert!(parse_quantity("c", "r", "lots").is_err());
        assert!(parse_quantity("c", "r", "1Qi").is_err());
    }
}
