//! The JSON bodies the fake sends, shaped after the OpenAPI document the `hcloud` crate
//! was generated from (e2e/hcloud/openapi.json). Every required key is always present,
//! required-but-nullable keys included (the crate fails on a missing one), and every
//! enum value is one the crate knows. tests/hcloud_contract.rs checks each body against
//! the schema of its route and status.

use serde_json::{json, Value};

use super::state::{Action, FirewallRecord, NetworkRecord, ServerRecord, SshKeyRecord};

/// A location as `GET /locations` describes it.
pub fn location(name: &str) -> Option<Value> {
    let (id, description, country, city, lat, lon, zone) = match name {
        "fsn1" => (1, "Falkenstein DC Park 1", "DE", "Falkenstein", 50.47612, 12.370071, "eu-central"),
        "nbg1" => (2, "Nuremberg DC Park 1", "DE", "Nuremberg", 49.452102, 11.076665, "eu-central"),
        "hel1" => (3, "Helsinki DC Park 1", "FI", "Helsinki", 60.169855, 24.938379, "eu-central"),
        "ash" => (4, "Ashburn, VA", "US", "Ashburn, VA", 39.045821, -77.487073, "us-east"),
        "hil" => (5, "Hillsboro, OR", "US", "Hillsboro, OR", 45.54222, -122.95128, "us-west"),
        "sin" => (6, "Singapore", "SG", "Singapore", 1.283333, 103.833333, "ap-southeast"),
        _ => return None,
    };
    Some(json!({
        "id": id, "name": name, "description": description, "country": country, "city": city,
        "latitude": lat, "longitude": lon, "network_zone": zone,
    }))
}

fn price() -> Value {
    json!({"net": "0.0400000000", "gross": "0.0476000000"})
}

fn server_type(name: &str, location_name: &str, location_id: i64) -> Value {
    json!({
        "id": 1, "name": name, "description": name.to_uppercase(), "category": "regular_purpose",
        "cores": 8, "memory": 16.0, "disk": 240.0, "deprecated": false, "deprecation": null,
        "architecture": "x86", "cpu_type": "shared", "storage_type": "local",
        "locations": [{"id": location_id, "name": location_name, "deprecation": null}],
        "prices": [{
            "location": location_name, "price_hourly": price(), "price_monthly": price(),
            "included_traffic": 21990232555520_i64, "price_per_tb_traffic": price(),
        }],
    })
}

pub fn server(record: &ServerRecord, status: &str) -> Value {
    let location = record.location.clone();
    let location_id = location["id"].as_i64().unwrap_or(1);
    let location_name = location["name"].as_str().unwrap_or("fsn1").to_string();
    let n = record.id;
    json!({
        "id": n,
        "name": record.name,
        "status": status,
        "created": record.created,
        "labels": record.labels,
        "backup_window": null,
        "image": null,
        "iso": null,
        "included_traffic": 21990232555520_i64,
        "ingoing_traffic": null,
        "outgoing_traffic": null,
        // Deprecated, removed from crate 0.26.0, still required by the spec.
        "datacenter": {
            "id": location_id, "name": format!("{location_name}-dc1"), "description": format!("{location_name} DC 1"),
            "location": location,
            "server_types": {"supported": [1], "available": [1], "available_for_migration": [1]},
        },
        "location": record.location,
        "locked": false,
        "placement_group": null,
        "primary_disk_size": 240,
        "private_net": record.network.map(|net| vec![json!({
            "network": net, "ip": format!("10.0.0.{}", 2 + n % 250), "alias_ips": [],
            "mac_address": format!("86:00:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        })]).unwrap_or_default(),
        "protection": {"delete": false, "rebuild": false},
        "public_net": {
            "floating_ips": [],
            "firewalls": record.firewalls.iter().map(|id| json!({"id": id, "status": "applied"})).collect::<Vec<_>>(),
            "ipv4": {"id": n, "ip": format!("203.0.113.{}", n % 250 + 1), "blocked": false,
                     "dns_ptr": format!("static.{}.203-0-113.clients.your-server.de", n % 250 + 1)},
            "ipv6": {"id": n, "ip": format!("2001:db8:{n:x}::/64"), "blocked": false, "dns_ptr": []},
        },
        "rescue_enabled": false,
        "server_type": server_type(&record.server_type, &location_name, location_id),
        "load_balancers": [],
        "volumes": [],
    })
}

pub fn action(action: &Action, status: &str, progress: i64, finished: Option<&str>) -> Value {
    let error = match (status, &action.error) {
        ("error", Some((code, message))) => json!({"code": code, "message": message}),
        _ => Value::Null,
    };
    json!({
        "id": action.id,
        "command": action.command,
        "status": status,
        "progress": progress,
        "started": action.started,
        "finished": finished,
        "resources": [{"id": action.resource, "type": "server"}],
        "error": error,
    })
}

pub fn firewall(record: &FirewallRecord) -> Value {
    json!({
        "id": record.id,
        "name": record.name,
        "labels": record.labels,
        "created": record.created,
        "rules": record.rules,
        "applied_to": [],
    })
}

pub fn ssh_key(record: &SshKeyRecord) -> Value {
    json!({
        "id": record.id, "name": record.name, "fingerprint": record.fingerprint,
        "public_key": record.public_key, "labels": {}, "created": record.created,
    })
}

pub fn network(record: &NetworkRecord) -> Value {
    json!({
        "id": record.id, "name": record.name, "ip_range": record.ip_range,
        "subnets": [{"type": "cloud", "ip_range": record.ip_range, "network_zone": "eu-central",
                     "gateway": "10.0.0.1", "vswitch_id": null}],
        "routes": [], "servers": record.servers, "protection": {"delete": false},
        "labels": {}, "created": record.created, "expose_routes_to_vswitch": false, "load_balancers": [],
    })
}

/// `meta.pagination` for one page of `total` items.
pub fn meta(page: usize, per_page: usize, total: usize) -> Value {
    let last = total.div_ceil(per_page).max(1);
    json!({"pagination": {
        "page": page, "per_page": per_page,
        "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
        "next_page": if page < last { json!(page + 1) } else { Value::Null },
        "last_page": last, "total_entries": total,
    }})
}

/// Hetzner's error envelope.
pub fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "details": null}})
}
