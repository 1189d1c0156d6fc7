//! The routes the operator's client calls, on the fake's state. Each returns a status
//! and a JSON body; authentication, faults, the rate bucket and counters are applied
//! before (mod.rs).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use super::json;
use super::state::{FirewallRecord, ServerRecord, State};

/// One answer.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

fn ok(status: u16, body: Value) -> Reply {
    Reply { status, body }
}

pub fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply { status, body: json::error(code, message) }
}

/// The route name used for counters and fault matching, e.g. `GET /servers/{id}`.
pub fn route_of(method: &str, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match (method, segments.as_slice()) {
        ("GET", ["servers"]) => "GET /servers",
        ("POST", ["servers"]) => "POST /servers",
        ("GET", ["servers", _]) => "GET /servers/{id}",
        ("DELETE", ["servers", _]) => "DELETE /servers/{id}",
        ("GET", ["actions", _]) => "GET /actions/{id}",
        ("GET", ["firewalls"]) => "GET /firewalls",
        ("POST", ["firewalls"]) => "POST /firewalls",
        ("DELETE", ["firewalls", _]) => "DELETE /firewalls/{id}",
        ("GET", ["ssh_keys"]) => "GET /ssh_keys",
        ("GET", ["networks"]) => "GET /networks",
        _ => return None,
    })
}

/// Dispatches a request that passed authentication and faults.
pub fn handle(state: &mut State, route: &str, path: &str, query: &[(String, String)], body: &[u8]) -> Reply {
    let now = Instant::now();
    state.collect_deleted(now);
    let id = path.trim_matches('/').split('/').nth(1).and_then(|s| s.parse::<i64>().ok());
    match (route, id) {
        ("GET /servers", _) => list_servers(state, query, now),
        ("POST /servers", _) => create_server(state, body, now),
        ("GET /servers/{id}", Some(id)) => get_server(state, id, now),
        ("DELETE /servers/{id}", Some(id)) => delete_server(state, id),
        ("GET /actions/{id}", Some(id)) => get_action(state, id, now),
        ("GET /firewalls", _) => list_firewalls(state, query),
        ("POST /firewalls", _) => create_firewall(state, body),
        ("DELETE /firewalls/{id}", Some(id)) => delete_firewall(state, id),
        ("GET /ssh_keys", _) => list_ssh_keys(state, query),
        ("GET /networks", _) => list_networks(state, query),
        _ => error(404, "not_found", "no such resource"),
    }
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `page`/`per_page` (max 50, as Hetzner) applied to `items`.
fn paginate(items: Vec<Value>, query: &[(String, String)]) -> (Vec<Value>, Value) {
    let per_page = param(query, "per_page").and_then(|v| v.parse().ok()).unwrap_or(25usize).clamp(1, 50);
    let page = param(query, "page").and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1);
    let total = items.len();
    let page_items = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    (page_items, json::meta(page, per_page, total))
}

/// Hetzner's label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, joined by commas.
pub fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let matched = if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).is_none_or(|x| x != v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).is_some_and(|x| x == v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else if term.contains(' ') {
            return Err(format!("unsupported label selector term {term:?}"));
        } else {
            labels.contains_key(term)
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

fn list_servers(state: &State, query: &[(String, String)], now: Instant) -> Reply {
    let selector = param(query, "label_selector").unwrap_or("");
    let name = param(query, "name");
    let mut items = Vec::new();
    for server in state.servers.values() {
        match selector_matches(selector, &server.labels) {
            Ok(true) if name.is_none_or(|n| n == server.name) => {
                items.push(json::server(server, state.server_status(server, now)))
            }
            Ok(_) => {}
            Err(message) => return error(400, "invalid_input", &message),
        }
    }
    let (servers, meta) = paginate(items, query);
    ok(200, json!({"servers": servers, "meta": meta}))
}

fn get_server(state: &State, id: i64, now: Instant) -> Reply {
    match state.servers.get(&id) {
        Some(server) => ok(200, json!({"server": json::server(server, state.server_status(server, now))})),
        None => error(404, "not_found", &format!("server with ID '{id}' not found")),
    }
}

fn create_server(state: &mut State, body: &[u8], now: Instant) -> Reply {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(400, "json_error", "invalid JSON");
    };
    let (Some(name), Some(server_type), Some(_image)) =
        (request["name"].as_str(), request["server_type"].as_str(), request["image"].as_str())
    else {
        return error(400, "invalid_input", "name, server_type and image are required");
    };
    let location_name = request["location"].as_str().unwrap_or("fsn1");
    let Some(location) = json::location(location_name) else {
        return error(400, "invalid_input", &format!("unknown location {location_name:?}"));
    };
    let user_data = request["user_data"].as_str().map(str::to_string);
    if user_data.as_ref().is_some_and(|u| u.len() > 32768) {
        return error(
            400,
            "invalid_input",
            "invalid input in field 'user_data': [user_data => [Length must be between 0 and 32768.]]",
        );
    }
    if state.servers.values().any(|s| s.name == name) {
        return error(409, "uniqueness_error", "server name is already used");
    }
    let labels: BTreeMap<String, String> =
        serde_json::from_value(request["labels"].clone()).unwrap_or_default();
    let id = state.id();
    let failure = state
        .behaviour
        .fail_create_actions
        .then(|| ("action_failed".to_string(), "Action failed".to_string()));
    let create_action = state.new_action("create_server", id, failure);
    let start_action = state.new_action("start_server", id, None);
    let record = ServerRecord {
        id,
        name: name.to_string(),
        server_type: server_type.to_string(),
        location,
        labels,
        created: super::state::now_rfc3339(),
        network: request["networks"].get(0).and_then(Value::as_i64),
        firewalls: request["firewalls"]
            .as_array()
            .map(|f| f.iter().filter_map(|x| x["firewall"].as_i64()).collect())
            .unwrap_or_default(),
        user_data,
        create_action: Some(create_action),
        delete_action: None,
    };
    let root_password = if request["ssh_keys"].as_array().is_some_and(|k| !k.is_empty()) {
        Value::Null
    } else {
        json!("fake-root-password")
    };
    let server = json::server(&record, state.server_status(&record, now));
    state.created_names.push(record.name.clone());
    state.servers.insert(id, record);
    let action = action_json(state, create_action, now);
    let next = action_json(state, start_action, now);
    ok(
        201,
        json!({"server": server, "action": action, "next_actions": [next], "root_password": root_password}),
    )
}

fn delete_server(state: &mut State, id: i64) -> Reply {
    if state.servers.get(&id).is_none_or(|s| s.delete_action.is_some()) {
        return error(404, "not_found", &format!("server with ID '{id}' not found"));
    }
    let action = state.new_action("delete_server", id, None);
    if state.behaviour.delete_lingers {
        if let Some(server) = state.servers.get_mut(&id) {
            server.delete_action = Some(action);
        }
    } else {
        // The real API removes the server at once; the action finishes later.
        state.servers.remove(&id);
    }
    ok(200, json!({"action": action_json(state, action, Instant::now())}))
}

fn action_json(state: &State, id: i64, now: Instant) -> Value {
    let Some(action) = state.actions.get(&id) else {
        return Value::Null;
    };
    if action.is_done(now) {
        let status = if action.error.is_some() { "error" } else { "success" };
        json::action(action, status, 100, Some(&super::state::now_rfc3339()))
    } else {
        let total = action.duration.as_secs_f64().max(f64::EPSILON);
        let progress = (now.duration_since(action.started_at).as_secs_f64() / total * 100.0) as i64;
        json::action(action, "running", progress.min(99), None)
    }
}

fn get_action(state: &State, id: i64, now: Instant) -> Reply {
    if !state.actions.contains_key(&id) {
        return error(404, "not_found", &format!("action with ID '{id}' not found"));
    }
    ok(200, json!({"action": action_json(state, id, now)}))
}

/// 204 and no body; `resource_in_use` while a server still has it (as the real API).
fn delete_firewall(state: &mut State, id: i64) -> Reply {
    if !state.firewalls.contains_key(&id) {
        return error(404, "not_found", &format!("firewall with ID '{id}' not found"));
    }
    if state.servers.values().any(|s| s.firewalls.contains(&id)) {
        return error(422, "resource_in_use", "firewall is still applied to a resource");
    }
    state.firewalls.remove(&id);
    ok(204, Value::Null)
}

fn list_firewalls(state: &State, query: &[(String, String)]) -> Reply {
    let name = param(query, "name");
    let items =
        state.firewalls.values().filter(|f| name.is_none_or(|n| n == f.name)).map(json::firewall).collect();
    let (firewalls, meta) = paginate(items, query);
    ok(200, json!({"firewalls": firewalls, "meta": meta}))
}

fn create_firewall(state: &mut State, body: &[u8]) -> Reply {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(400, "json_error", "invalid JSON");
    };
    let Some(name) = request["name"].as_str() else {
        return error(400, "invalid_input", "name is required");
    };
    if state.firewalls.values().any(|f| f.name == name) {
        return error(409, "uniqueness_error", "firewall name is already used");
    }
    let rules =
        request["rules"].as_array().cloned().unwrap_or_default().into_iter().map(rule_response).collect();
    let id = state.id();
    let record = FirewallRecord {
        id,
        name: name.to_string(),
        labels: serde_json::from_value(request["labels"].clone()).unwrap_or_default(),
        rules,
        created: super::state::now_rfc3339(),
    };
    let body = json!({"firewall": json::firewall(&record), "actions": []});
    state.firewalls.insert(id, record);
    ok(201, body)
}

/// A request rule as the API echoes it: every key present, `port` null for ICMP.
fn rule_response(rule: Value) -> Value {
    json!({
        "direction": rule["direction"].as_str().unwrap_or("in"),
        "protocol": rule["protocol"].as_str().unwrap_or("tcp"),
        "port": rule.get("port").cloned().unwrap_or(Value::Null),
        "source_ips": rule.get("source_ips").cloned().unwrap_or_else(|| json!([])),
        "destination_ips": rule.get("destination_ips").cloned().unwrap_or_else(|| json!([])),
        "description": rule.get("description").cloned().unwrap_or(Value::Null),
    })
}

fn list_ssh_keys(state: &State, query: &[(String, String)]) -> Reply {
    let name = param(query, "name");
    let items =
        state.ssh_keys.values().filter(|k| name.is_none_or(|n| n == k.name)).map(json::ssh_key).collect();
    let (ssh_keys, meta) = paginate(items, query);
    ok(200, json!({"ssh_keys": ssh_keys, "meta": meta}))
}

fn list_networks(state: &State, query: &[(String, String)]) -> Reply {
    let name = param(query, "name");
    let items =
        state.networks.values().filter(|n| name.is_none_or(|x| x == n.name)).map(json::network).collect();
    let (networks, meta) = paginate(items, query);
    ok(200, json!({"networks": networks, "meta": meta}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_follow_hetzner_syntax() {
        let labels: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into();
        for (selector, expected) in [
            ("a=1", true),
            ("a==1,b=2", true),
            ("a!=1", false),
            ("c!=1", true),
            ("a", true),
            ("!a", false),
            ("!c", true),
            ("a=2", false),
            ("", true),
        ] {
            assert_eq!(selector_matches(selector, &labels), Ok(expected), "{selector}");
        }
        assert!(selector_matches("a in (1,2)", &labels).is_err());
    }

    #[test]
    fn routes_are_named_by_template() {
        assert_eq!(route_of("GET", "/servers/12"), Some("GET /servers/{id}"));
        assert_eq!(route_of("DELETE", "/servers/12"), Some("DELETE /servers/{id}"));
        assert_eq!(route_of("PUT", "/servers/12"), None);
    }
}
