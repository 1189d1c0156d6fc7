//! The fake Hetzner API against its contract: every route it implements, with every
//! status it can answer, sends a body that (1) validates against the schema of that
//! route and status in the OpenAPI document the `hcloud` crate 0.26.0 was generated from
//! (e2e/hcloud/openapi.json, hcloud-openapi ba7c999), made strict — no keys the schema
//! does not name — and (2) decodes into the crate's own model. So the fake cannot drift
//! from what the crate decodes.
//!
//! OpenAPI 3.0 schemas are not JSON Schema; the conversion (`to_json_schema`):
//! - `nullable: true` becomes `anyOf: [{type: null}, <schema without nullable>]`;
//! - objects with `properties` and no `additionalProperties` get `additionalProperties:
//!   false` (OpenAPI allows extra keys; the fake must not invent any);
//! - `example`/`examples` are dropped (annotations only);
//! - the result is checked as draft 2020-12 with format validation on (`date-time`);
//!   OpenAPI-only formats (`int64`, `double`, `decimal`) are ignored as unknown formats.
//!
//! `$ref`s (`#/components/schemas/...`) resolve inside the one document we build.

use std::time::Duration;

use relay_e2e::hcloud_fake::{Behaviour, FakeHetzner, Fault, TOKEN};
use serde_json::{json, Value};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hcloud/openapi.json");
    let text = std::fs::read_to_string(path).expect("e2e/hcloud/openapi.json is in the repository");
    serde_json::from_str(&text).expect("the spec is JSON")
}

/// OpenAPI 3.0 schema object → JSON Schema 2020-12 (see the module comment).
fn to_json_schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, v) in map {
                if matches!(key.as_str(), "nullable" | "example" | "examples") {
                    continue;
                }
                // `properties` is a map of names, not a schema: convert each value.
                let converted = if key == "properties" {
                    Value::Object(
                        v.as_object()
                            .map(|p| p.iter().map(|(k, s)| (k.clone(), to_json_schema(s))).collect())
                            .unwrap_or_default(),
                    )
                } else {
                    to_json_schema(v)
                };
                out.insert(key.clone(), converted);
            }
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                return json!({"anyOf": [{"type": "null"}, Value::Object(out)]});
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// The validator for one route's response: the status's schema, else `default`.
fn validator(spec: &Value, path: &str, method: &str, status: u16) -> jsonschema::Validator {
    let responses = &spec["paths"][path][method]["responses"];
    let response = responses.get(status.to_string()).or_else(|| responses.get("default"));
    let schema = response
        .map(|r| &r["content"]["application/json"]["schema"])
        .unwrap_or_else(|| panic!("{method} {path}: no response {status} or default in the spec"));
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [to_json_schema(schema)],
        "components": to_json_schema(&spec["components"]),
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: schema: {e}"))
}

/// One request to the fake: (status, body).
async fn call(
    fake: &FakeHetzner,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    token: &str,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method, format!("{}{path}", fake.base_url())).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the fake answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {text}")))
}

/// Checks one answer against the schema and the crate's model for it.
struct Checker {
    spec: Value,
    checked: Vec<String>,
}

impl Checker {
    fn check(&mut self, template: &str, method: &str, status: u16, body: &Value) {
        let validator = validator(&self.spec, template, method, status);
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: the fake's body breaks the spec:\n{}\n{body:#}",
            errors.join("\n")
        );
        decode_with_crate(template, method, status, body);
        self.checked.push(format!("{} {template} {status}", method.to_uppercase()));
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &Value) {
    if let Err(e) = serde_json::from_value::<T>(body.clone()) {
        panic!("{what}: the crate cannot decode the fake's body: {e}\n{body:#}");
    }
}

fn decode_with_crate(template: &str, method: &str, status: u16, body: &Value) {
    use hcloud::models::*;
    let what = format!("{method} {template} {status}");
    if status >= 400 {
        return decode::<ErrorResponse>(&what, body);
    }
    match (method, template) {
        ("post", "/servers") => decode::<CreateServerResponse>(&what, body),
        ("get", "/servers") => decode::<ListServersResponse>(&what, body),
        ("get", "/servers/{id}") => decode::<GetServerResponse>(&what, body),
        ("delete", "/servers/{id}") => decode::<DeleteServerResponse>(&what, body),
        ("get", "/actions/{id}") => decode::<GetActionResponse>(&what, body),
        ("get", "/firewalls") => decode::<ListFirewallsResponse>(&what, body),
        ("post", "/firewalls") => decode::<CreateFirewallResponse>(&what, body),
        ("get", "/ssh_keys") => decode::<ListSshKeysResponse>(&what, body),
        ("get", "/networks") => decode::<ListNetworksResponse>(&what, body),
        _ => panic!("{what}: no crate model mapped"),
    }
}

fn create_body(name: &str) -> Value {
    json!({
        "name": name, "server_type": "cpx41", "image": "ubuntu-24.04", "location": "ash",
        "labels": {"atrelay.dev/relay-uid": "6f1c2a9e-0b7d-4e55-9a33-1234567890ab"},
        "ssh_keys": ["ops"], "firewalls": [{"firewall": 1}], "networks": [7],
        "user_data": "#cloud-config\n", "start_after_create": true,
    })
}

#[tokio::test]
async fn every_route_and_status_of_the_fake_matches_the_openapi_schema_and_the_crate() {
    use reqwest::Method;
    let fake = FakeHetzner::start().await.expect("fake starts");
    let mut checker = Checker { spec: spec(), checked: Vec::new() };
    fake.add_ssh_key("ops");
    let network = fake.add_network("relays", "10.0.0.0/16");
    fake.set_behaviour(Behaviour {
        action_duration: Duration::from_millis(300),
        delete_lingers: true,
        ..Behaviour::default()
    });

    // POST /servers: 201 without and with SSH keys (root_password null vs string).
    let (status, body) =
        call(&fake, Method::POST, "/servers", Some(create_body("relay-a-6f1c2a9e")), TOKEN).await;
    checker.check("/servers", "post", status, &body);
    assert_eq!(status, 201);
    let id = body["server"]["id"].as_i64().expect("id");
    let action = body["action"]["id"].as_i64().expect("action id");
    let mut no_keys = create_body("relay-b-6f1c2a9e");
    no_keys["ssh_keys"] = json!([]);
    no_keys["networks"] = json!([network]);
    let (status, body) = call(&fake, Method::POST, "/servers", Some(no_keys), TOKEN).await;
    checker.check("/servers", "post", status, &body);
    assert!(body["root_password"].is_string());
    // POST /servers: 409 uniqueness_error, 400 invalid_input (user_data too long, location).
    let (status, body) =
        call(&fake, Method::POST, "/servers", Some(create_body("relay-a-6f1c2a9e")), TOKEN).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("uniqueness_error")));
    checker.check("/servers", "post", status, &body);
    let mut too_long = create_body("relay-c");
    too_long["user_data"] = json!("x".repeat(32769));
    let (status, body) = call(&fake, Method::POST, "/servers", Some(too_long), TOKEN).await;
    assert_eq!(status, 400);
    checker.check("/servers", "post", status, &body);

    // GET /servers/{id} while initializing and running; actions running and done.
    let (status, body) = call(&fake, Method::GET, &format!("/servers/{id}"), None, TOKEN).await;
    assert_eq!(body["server"]["status"], "initializing");
    checker.check("/servers/{id}", "get", status, &body);
    let (status, body) = call(&fake, Method::GET, &format!("/actions/{action}"), None, TOKEN).await;
    assert_eq!(body["action"]["status"], "running");
    checker.check("/actions/{id}", "get", status, &body);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, body) = call(&fake, Method::GET, &format!("/actions/{action}"), None, TOKEN).await;
    assert_eq!(body["action"]["status"], "success");
    checker.check("/actions/{id}", "get", status, &body);
    let (status, body) = call(&fake, Method::GET, &format!("/servers/{id}"), None, TOKEN).await;
    assert_eq!(body["server"]["status"], "running");
    checker.check("/servers/{id}", "get", status, &body);

    // GET /servers: by label selector, by name, paged, and an empty page.
    for query in [
        "?label_selector=atrelay.dev/relay-uid%3D6f1c2a9e-0b7d-4e55-9a33-1234567890ab",
        "?name=relay-a-6f1c2a9e",
        "?per_page=1&page=2",
        "?name=nothing",
    ] {
        let (status, body) = call(&fake, Method::GET, &format!("/servers{query}"), None, TOKEN).await;
        checker.check("/servers", "get", status, &body);
    }

    // A failed action (error object present).
    fake.set_behaviour(Behaviour { fail_create_actions: true, ..Behaviour::default() });
    let (_, body) = call(&fake, Method::POST, "/servers", Some(create_body("relay-failing")), TOKEN).await;
    let failed = body["action"]["id"].as_i64().expect("action id");
    let (status, body) = call(&fake, Method::GET, &format!("/actions/{failed}"), None, TOKEN).await;
    assert_eq!(body["action"]["status"], "error");
    checker.check("/actions/{id}", "get", status, &body);

    // DELETE /servers/{id}: 200 with the action, the server `deleting`, then 404s.
    fake.set_behaviour(Behaviour {
        action_duration: Duration::from_millis(200),
        delete_lingers: true,
        ..Behaviour::default()
    });
    let (status, body) = call(&fake, Method::DELETE, &format!("/servers/{id}"), None, TOKEN).await;
    checker.check("/servers/{id}", "delete", status, &body);
    let (status, body) = call(&fake, Method::GET, &format!("/servers/{id}"), None, TOKEN).await;
    assert_eq!(body["server"]["status"], "deleting");
    checker.check("/servers/{id}", "get", status, &body);
    tokio::time::sleep(Duration::from_millis(250)).await;
    for (method, template) in [(Method::GET, "get"), (Method::DELETE, "delete")] {
        let (status, body) = call(&fake, method, &format!("/servers/{id}"), None, TOKEN).await;
        assert_eq!(status, 404);
        checker.check("/servers/{id}", template, status, &body);
    }
    let (status, body) = call(&fake, Method::GET, "/actions/999999", None, TOKEN).await;
    checker.check("/actions/{id}", "get", status, &body);

    // Firewalls, SSH keys, networks.
    let firewall = json!({"name": "relay-a", "labels": {"atrelay.dev/managed-by": "relay-operator"}, "rules": [
        {"direction": "in", "protocol": "tcp", "port": "443", "source_ips": ["0.0.0.0/0", "::/0"], "description": "firehose"},
        {"direction": "in", "protocol": "icmp", "source_ips": ["0.0.0.0/0"]},
    ]});
    let (status, body) = call(&fake, Method::POST, "/firewalls", Some(firewall.clone()), TOKEN).await;
    checker.check("/firewalls", "post", status, &body);
    let (status, body) = call(&fake, Method::POST, "/firewalls", Some(firewall), TOKEN).await;
    assert_eq!(status, 409);
    checker.check("/firewalls", "post", status, &body);
    for (path, template) in [
        ("/firewalls?name=relay-a", "/firewalls"),
        ("/ssh_keys", "/ssh_keys"),
        ("/ssh_keys?name=ops", "/ssh_keys"),
        ("/networks?name=relays", "/networks"),
    ] {
        let (status, body) = call(&fake, Method::GET, path, None, TOKEN).await;
        checker.check(template, "get", status, &body);
    }
    // DELETE /firewalls/{id}: 204 without a body (as the spec declares), then 404.
    let id = fake.firewalls().first().map(|f| f.0).expect("the firewall created above");
    assert!(checker.spec["paths"]["/firewalls/{id}"]["delete"]["responses"].get("204").is_some());
    let response = reqwest::Client::new()
        .delete(format!("{}/firewalls/{id}", fake.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(response.status().as_u16(), 204);
    assert!(response.text().await.expect("a body").is_empty(), "204 has no body");
    let (status, body) = call(&fake, Method::DELETE, &format!("/firewalls/{id}"), None, TOKEN).await;
    assert_eq!(status, 404);
    checker.check("/firewalls/{id}", "delete", status, &body);

    // Injected faults: 401 (and a wrong token), 429, 503, 412.
    let (status, body) = call(&fake, Method::GET, "/servers", None, "wrong-token").await;
    assert_eq!(status, 401);
    checker.check("/servers", "get", status, &body);
    for (fault, expected) in [
        (Fault::Unauthorized, 401),
        (Fault::RateLimited, 429),
        (Fault::ServerError, 503),
        (Fault::ResourceUnavailable, 412),
        (Fault::UniquenessError, 409),
    ] {
        fake.inject(Some("POST /servers"), fault, 1);
        let (status, body) =
            call(&fake, Method::POST, "/servers", Some(create_body("relay-fault")), TOKEN).await;
        assert_eq!(status, expected, "{fault:?}");
        checker.check("/servers", "post", status, &body);
    }
    eprintln!("checked {} responses: {:#?}", checker.checked.len(), checker.checked);
}

#[tokio::test]
async fn a_429_carries_rate_headers_and_a_reset_drops_the_connection() {
    let fake = FakeHetzner::start().await.expect("fake starts");
    let client = reqwest::Client::new();
    fake.inject(None, Fault::RateLimited, 1);
    let response =
        client.get(format!("{}/servers", fake.base_url())).bearer_auth(TOKEN).send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 429);
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("ratelimit-limit").as_deref(), Some("3600"));
    assert_eq!(header("ratelimit-remaining").as_deref(), Some("0"));
    assert!(header("ratelimit-reset").and_then(|v| v.parse::<u64>().ok()).is_some());

    fake.inject(Some("GET /servers"), Fault::ConnectionReset, 1);
    let error = client
        .get(format!("{}/servers", fake.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect_err("reset");
    assert!(error.is_request() || error.is_connect(), "{error:?}");
    // The next request is served normally.
    let response =
        client.get(format!("{}/servers", fake.base_url())).bearer_auth(TOKEN).send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(fake.requests().get("GET /servers"), Some(&3));
}

#[test]
fn the_converted_schema_rejects_what_the_crate_would_reject() {
    // Guards the conversion: a server without a required-but-nullable key, or with an
    // unknown status, must fail validation (the crate fails to decode both).
    let spec = spec();
    let validator = validator(&spec, "/servers/{id}", "get", 200);
    let good = json!({"server": null});
    assert!(!validator.is_valid(&good), "server is not nullable in get_server_response");
    let action = validator_for_action(&spec);
    let mut body = json!({"action": {"id": 1, "command": "create_server", "status": "running", "progress": 0,
        "started": "2025-01-01T00:00:00Z", "finished": null, "resources": [], "error": null}});
    assert!(action.is_valid(&body));
    body["action"]["status"] = json!("queued");
    assert!(!action.is_valid(&body), "unknown enum value");
    body["action"]["status"] = json!("running");
    body["action"].as_object_mut().expect("object").remove("finished");
    assert!(!action.is_valid(&body), "missing required nullable key");
    body["action"]["finished"] = Value::Null;
    body["action"]["extra"] = json!(1);
    assert!(!action.is_valid(&body), "keys outside the schema are refused");
}

fn validator_for_action(spec: &Value) -> jsonschema::Validator {
    validator(spec, "/actions/{id}", "get", 200)
}
