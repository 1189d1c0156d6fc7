#!/usr/bin/env python3
"""Generates the Grafana dashboard ConfigMaps in this folder.

    python3 config/dashboards/generate.py           # rewrite relay-dashboard.yaml, fleet-dashboard.yaml
    python3 config/dashboards/generate.py --check   # exit 1 when a committed file differs

The dashboards are written here as Python data so that every panel of the per-relay dashboard
uses the same selector and the fleet overview the same per-relay grouping; edit this file, not
the generated YAML (scripts/check-monitoring.sh fails on drift).

Label model (what the relay's ServiceMonitor, cAdvisor and kube-state-metrics attach): a relay
named R in namespace N runs as StatefulSet R, pod R-0, container "relay". Every query selects
`namespace="$namespace", pod=~"$relay-[0-9]+"`, so relay metrics, container_* and kube_* series
line up on the same labels.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}

# Selector of the chosen relay (per-relay dashboard) and of every relay (fleet dashboard).
ONE = 'namespace="$namespace", pod=~"$relay-[0-9]+"'
ALL = 'namespace=~"$namespace"'
CONTAINER = 'container="relay"'

COVERAGE_DEGRADED = 0.90
COVERAGE_CRITICAL = 0.70


def relay_name(expr):
    """Adds a `relay` label (the Relay's name, from the pod name) for legends and joins."""
    return f'label_replace({expr}, "relay", "$1", "pod", "(.+)-[0-9]+")'


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping into rows."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title):
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def newline(self):
        if self.x:
            self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _id(self):
        self.next_id += 1
        return self.next_id - 1


def targets(*queries):
    out = []
    for index, query in enumerate(queries):
        expr, legend = query[0], query[1]
        target = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + index)}
        if len(query) > 2:
            target.update(query[2])
        out.append(target)
    return out


def thresholds(*steps):
    """steps: (value or None, colour) pairs, lowest first."""
    return {"mode": "absolute", "steps": [{"color": colour, "value": value} for value, colour in steps]}


def timeseries(title, description, queries, unit="short", minimum=None, maximum=None, steps=None, stack=False):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if steps else "off"},
        },
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if steps:
        defaults["thresholds"] = thresholds(*steps)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(*queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title, description, expr, unit="short", steps=None, mappings=None, decimals=None):
    defaults = {"unit": unit, "thresholds": thresholds(*(steps or [(None, "green")]))}
    if mappings:
        defaults["mappings"] = mappings
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets((expr, "", {"instant": True})),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "center",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value",
        },
    }


def bargauge(title, description, expr, legend, unit, steps, minimum=0, maximum=1):
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets((expr, legend, {"instant": True})),
        "fieldConfig": {
            "defaults": {"unit": unit, "min": minimum, "max": maximum, "thresholds": thresholds(*steps)},
            "overrides": [],
        },
        "options": {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
        },
    }


READY_MAPPING = [
    {"type": "value", "options": {"0": {"text": "not ready", "color": "red"}, "1": {"text": "ready", "color": "green"}}}
]
STOPPED_MAPPING = [
    {"type": "value", "options": {"0": {"text": "running", "color": "green"}, "1": {"text": "STOPPED", "color": "red"}}}
]
COVERAGE_STEPS = [(None, "red"), (COVERAGE_CRITICAL, "orange"), (COVERAGE_DEGRADED, "green")]
MEMORY_STEPS = [(None, "green"), (0.8, "orange"), (0.9, "red")]
DISK_STEPS = [(None, "red"), (1 << 30, "orange"), (10 << 30, "green")]


def datasource_variable():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_variable(name, label, query, regex="", multi=False, include_all=False):
    variable = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "regex": regex,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": {},
        "hide": 0,
    }
    if include_all:
        variable["allValue"] = ".+"
    return variable


def dashboard(uid, title, description, variables, panels):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["atproto", "relay"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["atproto"], "asDropdown": True, "title": "Relay dashboards", "includeVars": True}
        ],
        "panels": panels,
    }


def relay_dashboard():
    layout = Layout()
    rate = "$__rate_interval"

    layout.row("Now")
    layout.add(
        stat(
            "Ready",
            "The pod's Ready condition (kube-state-metrics): the relay's /_ready, which fails while no "
            "or too few hosts are connected, nothing was accepted for too long, the log cannot be "
            "written, or the coverage self-check failed twice in a row.",
            f'max(kube_pod_status_ready{{{ONE}, condition="true"}})',
            mappings=READY_MAPPING,
            steps=[(None, "red"), (1, "green")],
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Events/s",
            "Events written to the log per second (relay_events_sequenced_total).",
            f"sum(rate(relay_events_sequenced_total{{{ONE}}}[{rate}]))",
            unit="ops",
            decimals=1,
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Hosts connected",
            "Upstream hosts with an open subscription (relay_hosts_connected).",
            f"max(relay_hosts_connected{{{ONE}}})",
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Consumers",
            "Connected firehose consumers (relay_consumers).",
            f"max(relay_consumers{{{ONE}}})",
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Memory of limit",
            "Working set of the relay container against its memory limit (cAdvisor, kube-state-metrics). "
            "Empty when the container has no limit.",
            f"max(container_memory_working_set_bytes{{{ONE}, {CONTAINER}}}) / "
            f'max(kube_pod_container_resource_limits{{{ONE}, {CONTAINER}, resource="memory"}})',
            unit="percentunit",
            steps=MEMORY_STEPS,
            decimals=0,
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Log disk free",
            "Free bytes on the event log's filesystem (relay_disk_free_bytes{dir=\"log\"}).",
            f'min(relay_disk_free_bytes{{{ONE}, dir="log"}})',
            unit="bytes",
            steps=DISK_STEPS,
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Coverage (worst reference)",
            "The lowest relay_coverage_ratio over the configured references (the self-check's last "
            f"sample). Orange below {COVERAGE_DEGRADED}, red below {COVERAGE_CRITICAL}.",
            f"min(relay_coverage_ratio{{{ONE}}})",
            unit="percentunit",
            steps=COVERAGE_STEPS,
            decimals=1,
        ),
        3,
        4,
    )
    layout.add(
        stat(
            "Intake",
            "relay_intake_stopped: 1 while the event log cannot be written and intake is stopped "
            "(/_health says why).",
            f"max(relay_intake_stopped{{{ONE}}})",
            mappings=STOPPED_MAPPING,
            steps=[(None, "green"), (1, "red")],
        ),
        3,
        4,
    )

    layout.row("Events")
    layout.add(
        timeseries(
            "Events/s",
            "Received from upstream hosts (by type), accepted by validation, and written to the log.",
            [
                (f"sum by (type) (rate(relay_events_received_total{{{ONE}}}[{rate}]))", "received {{type}}"),
                (f"sum(rate(relay_events_accepted_total{{{ONE}}}[{rate}]))", "accepted"),
                (f"sum(rate(relay_events_sequenced_total{{{ONE}}}[{rate}]))", "sequenced"),
            ],
            unit="ops",
            minimum=0,
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Validation rejections by reason",
            "Events dropped per second, by reason (relay_events_rejected_total); docs/validation.md "
            "explains each reason.",
            [(f"sum by (reason) (rate(relay_events_rejected_total{{{ONE}}}[{rate}]))", "{{reason}}")],
            unit="ops",
            minimum=0,
            stack=True,
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Validation and log write latency",
            "p99 time to validate one event and to write and fsync one log batch.",
            [
                (
                    f"histogram_quantile(0.99, sum by (le) (rate(relay_validation_seconds_bucket{{{ONE}}}[{rate}])))",
                    "validate p99",
                ),
                (
                    f"histogram_quantile(0.99, sum by (le) (rate(relay_log_write_seconds_bucket{{{ONE}}}[{rate}])))",
                    "log write p99",
                ),
            ],
            unit="s",
            minimum=0,
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Queues",
            "Bytes waiting between ingest and validation (relay_queue_bytes), accounts whose events "
            "wait for an identity lookup, and chain breaks per second.",
            [
                (f"sum by (queue) (relay_queue_bytes{{{ONE}}})", "queue {{queue}} (bytes)"),
                (f"max(relay_identity_held_accounts{{{ONE}}})", "identity-held accounts"),
                (f"sum(rate(relay_chain_breaks_total{{{ONE}}}[{rate}]))", "chain breaks/s"),
            ],
            minimum=0,
        ),
        12,
        8,
    )

    layout.row("Upstream hosts")
    layout.add(
        timeseries(
            "Hosts connected",
            "Hosts with an open subscription against the known hosts by status (relay_hosts).",
            [
                (f"max(relay_hosts_connected{{{ONE}}})", "connected"),
                (f"max by (status) (relay_hosts{{{ONE}}})", "known: {{status}}"),
            ],
            minimum=0,
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Throttled reads",
            "Events read later than they arrived because their host went over its event rate or its "
            "identity lookup budget (nothing is dropped).",
            [
                (f"sum(rate(relay_host_throttled_events_total{{{ONE}}}[{rate}]))", "event rate"),
                (f"sum(rate(relay_host_identity_throttled_events_total{{{ONE}}}[{rate}]))", "identity budget"),
            ],
            unit="ops",
            minimum=0,
        ),
        12,
        8,
    )

    layout.row("Resources")
    layout.add(
        timeseries(
            "Memory against limit",
            "Working set of the relay container (cAdvisor) and its memory limit (kube-state-metrics); "
            "the relay's own RSS for comparison.",
            [
                (f"max(container_memory_working_set_bytes{{{ONE}, {CONTAINER}}})", "working set"),
                (f'max(kube_pod_container_resource_limits{{{ONE}, {CONTAINER}, resource="memory"}})', "limit"),
                (f"max(process_resident_memory_bytes{{{ONE}}})", "RSS (relay)"),
            ],
            unit="bytes",
            minimum=0,
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Event log disk",
            "Free bytes on the filesystems of the event log and of the data directory "
            "(relay_disk_free_bytes), and log write failures per second.",
            [
                (f"min by (dir) (relay_disk_free_bytes{{{ONE}}})", "free: {{dir}}"),
                (f"sum(rate(relay_log_write_failures_total{{{ONE}}}[{rate}]))", "write failures/s"),
            ],
            unit="bytes",
            minimum=0,
        ),
        12,
        8,
    )

    layout.row("Consumers")
    layout.add(
        timeseries(
            "Consumers",
            "Connected firehose consumers; refusals by limit and closes of consumers that fell out of "
            "the replay window, per second.",
            [
                (f"max(relay_consumers{{{ONE}}})", "connected"),
                (f"sum by (limit) (rate(relay_consumers_refused_total{{{ONE}}}[{rate}]))", "refused/s: {{limit}}"),
                (f"sum(rate(relay_consumers_too_slow_total{{{ONE}}}[{rate}]))", "too slow/s"),
            ],
            minimum=0,
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Delivery lag",
            "Age of a consumer write's oldest event when it was flushed (relay_consumer_delivery_lag_seconds).",
            [
                (
                    f"histogram_quantile(0.5, sum by (le) (rate(relay_consumer_delivery_lag_seconds_bucket{{{ONE}}}[{rate}])))",
                    "p50",
                ),
                (
                    f"histogram_quantile(0.99, sum by (le) (rate(relay_consumer_delivery_lag_seconds_bucket{{{ONE}}}[{rate}])))",
                    "p99",
                ),
            ],
            unit="s",
            minimum=0,
        ),
        12,
        8,
    )

    layout.row("Backfill and collection index")
    layout.add(
        timeseries(
            "Backfill progress",
            "DIDs found and pages fetched per second by backfill jobs (import, crawl), and failed "
            "requests (retried) and HTTP 429s per second.",
            [
                (f"sum by (kind) (rate(relay_backfill_dids_total{{{ONE}}}[{rate}]))", "DIDs/s: {{kind}}"),
                (f"sum by (kind) (rate(relay_backfill_pages_total{{{ONE}}}[{rate}]))", "pages/s: {{kind}}"),
                (f"sum by (kind) (rate(relay_backfill_errors_total{{{ONE}}}[{rate}]))", "errors/s: {{kind}}"),
                (f"sum(rate(relay_backfill_rate_limited_total{{{ONE}}}[{rate}]))", "429s/s"),
            ],
            minimum=0,
        ),
        8,
        8,
    )
    layout.add(
        timeseries(
            "Verification",
            "Pairs waiting for verification (relay_collections_pending, RocksDB estimate) and DIDs "
            "settled per second by result.",
            [
                (f"max(relay_collections_pending{{{ONE}}})", "pending pairs"),
                (f"sum by (result) (rate(relay_collections_verified_total{{{ONE}}}[{rate}]))", "settled/s: {{result}}"),
            ],
            minimum=0,
        ),
        8,
        8,
    )
    layout.add(
        timeseries(
            "Index",
            "Listed (DID, collection) pairs and how many sequence numbers the live indexer is behind "
            "the log head.",
            [
                (f"max(relay_collections_pairs{{{ONE}}})", "pairs"),
                (
                    f"max(relay_seq_head{{{ONE}}}) - max(relay_collections_indexed_seq{{{ONE}}})",
                    "indexer behind (seq)",
                ),
            ],
            minimum=0,
        ),
        8,
        8,
    )

    layout.row("Coverage")
    layout.add(
        timeseries(
            "Coverage against each reference",
            "Share of each reference relay's commits (in the self-check's last sample window) that "
            f"this relay delivered too (relay_coverage_ratio). Lines at {COVERAGE_DEGRADED} (degraded) "
            f"and {COVERAGE_CRITICAL} (critical).",
            [(f"max by (reference) (relay_coverage_ratio{{{ONE}}})", "{{reference}}")],
            unit="percentunit",
            minimum=0,
            maximum=1,
            steps=COVERAGE_STEPS,
        ),
        12,
        8,
    )
    layout.add(
        bargauge(
            "Coverage now",
            "The last measured coverage per reference.",
            f"max by (reference) (relay_coverage_ratio{{{ONE}}})",
            "{{reference}}",
            "percentunit",
            COVERAGE_STEPS,
        ),
        6,
        8,
    )
    layout.add(
        timeseries(
            "Coverage samples",
            "Self-check samples per hour by reference and result (ok, low, too_few, truncated, failed); "
            "only ok and low measure coverage.",
            [
                (
                    f"sum by (reference, result) (increase(relay_coverage_samples_total{{{ONE}}}[1h]))",
                    "{{reference}} {{result}}",
                ),
                (f"max by (reference) (relay_coverage_reference_commits{{{ONE}}})", "{{reference}} reference commits"),
            ],
            minimum=0,
        ),
        6,
        8,
    )

    return dashboard(
        "atproto-relay",
        "ATProto relay",
        "One relay of the fleet: pick its namespace and name. Every relay has the same layout.",
        [
            datasource_variable(),
            query_variable("namespace", "Namespace", "label_values(relay_seq_head, namespace)"),
            query_variable(
                "relay",
                "Relay",
                'label_values(relay_seq_head{namespace="$namespace"}, pod)',
                regex="/^(.+)-[0-9]+$/",
            ),
        ],
        layout.panels,
    )


def fleet_dashboard():
    layout = Layout()
    rate = "$__rate_interval"

    def per_relay(expr):
        return relay_name(expr)

    columns = [
        ("Ready", f'max by (namespace, pod) (kube_pod_status_ready{{{ALL}, condition="true"}}) '
                  f"and on (namespace, pod) max by (namespace, pod) (relay_seq_head{{{ALL}}})", "none"),
        ("Events/s", f"sum by (namespace, pod) (rate(relay_events_sequenced_total{{{ALL}}}[5m]))", "ops"),
        ("Hosts connected", f"max by (namespace, pod) (relay_hosts_connected{{{ALL}}})", "none"),
        ("Consumers", f"max by (namespace, pod) (relay_consumers{{{ALL}}})", "none"),
        (
            "Memory of limit",
            f"max by (namespace, pod) (container_memory_working_set_bytes{{{ALL}, {CONTAINER}}}) / on (namespace, pod) "
            f'max by (namespace, pod) (kube_pod_container_resource_limits{{{ALL}, {CONTAINER}, resource="memory"}})',
            "percentunit",
        ),
        ("Log disk free", f'min by (namespace, pod) (relay_disk_free_bytes{{{ALL}, dir="log"}})', "bytes"),
        ("Coverage (worst)", f"min by (namespace, pod) (relay_coverage_ratio{{{ALL}}})", "percentunit"),
        ("Rejected/s", f"sum by (namespace, pod) (rate(relay_events_rejected_total{{{ALL}}}[5m]))", "ops"),
        ("Pending pairs", f"max by (namespace, pod) (relay_collections_pending{{{ALL}}})", "none"),
    ]
    table_targets = []
    overrides = []
    for index, (title, expr, unit) in enumerate(columns):
        ref = chr(ord("A") + index)
        table_targets.append(
            {"datasource": DS, "expr": per_relay(expr), "format": "table", "instant": True, "refId": ref, "legendFormat": ""}
        )
        override = {
            "matcher": {"id": "byName", "options": f"Value #{ref}"},
            "properties": [{"id": "displayName", "value": title}, {"id": "unit", "value": unit}],
        }
        if title == "Ready":
            override["properties"] += [
                {"id": "mappings", "value": READY_MAPPING},
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                {"id": "thresholds", "value": thresholds((None, "red"), (1, "green"))},
            ]
        if title.startswith("Coverage"):
            override["properties"] += [
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                {"id": "thresholds", "value": thresholds(*COVERAGE_STEPS)},
                {"id": "decimals", "value": 1},
            ]
        if title == "Memory of limit":
            override["properties"] += [
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                {"id": "thresholds", "value": thresholds(*MEMORY_STEPS)},
            ]
        if title == "Log disk free":
            override["properties"] += [
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                {"id": "thresholds", "value": thresholds(*DISK_STEPS)},
            ]
        overrides.append(override)
    layout.row("Fleet")
    layout.add(
        {
            "type": "table",
            "title": "Relays",
            "description": "One line per relay: the same figures as the top row of the per-relay dashboard.",
            "datasource": DS,
            "targets": table_targets,
            "transformations": [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "pod": True},
                        "indexByName": {"namespace": 0, "relay": 1},
                        "renameByName": {"namespace": "Namespace", "relay": "Relay"},
                    },
                },
            ],
            "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": overrides},
            "options": {"showHeader": True, "sortBy": [{"displayName": "Relay", "desc": False}]},
            "links": [],
        },
        24,
        8,
    )

    side_by_side = [
        (
            "Events/s",
            "Events written to the log per second, per relay.",
            f"sum by (namespace, pod) (rate(relay_events_sequenced_total{{{ALL}}}[{rate}]))",
            "ops",
            None,
            None,
        ),
        (
            "Hosts connected",
            "Upstream hosts with an open subscription, per relay.",
            f"max by (namespace, pod) (relay_hosts_connected{{{ALL}}})",
            "short",
            None,
            None,
        ),
        (
            "Memory of limit",
            "Working set of each relay container against its memory limit.",
            f"max by (namespace, pod) (container_memory_working_set_bytes{{{ALL}, {CONTAINER}}}) / on (namespace, pod) "
            f'max by (namespace, pod) (kube_pod_container_resource_limits{{{ALL}, {CONTAINER}, resource="memory"}})',
            "percentunit",
            MEMORY_STEPS,
            None,
        ),
        (
            "Event log disk free",
            "Free bytes on each relay's event log filesystem.",
            f'min by (namespace, pod) (relay_disk_free_bytes{{{ALL}, dir="log"}})',
            "bytes",
            None,
            None,
        ),
        (
            "Consumers",
            "Connected firehose consumers, per relay.",
            f"max by (namespace, pod) (relay_consumers{{{ALL}}})",
            "short",
            None,
            None,
        ),
        (
            "Validation rejections/s",
            "Events dropped per second (all reasons), per relay; the per-relay dashboard splits them by reason.",
            f"sum by (namespace, pod) (rate(relay_events_rejected_total{{{ALL}}}[{rate}]))",
            "ops",
            None,
            None,
        ),
        (
            "Backfill DIDs/s",
            "DIDs found per second by backfill jobs, per relay.",
            f"sum by (namespace, pod) (rate(relay_backfill_dids_total{{{ALL}}}[{rate}]))",
            "ops",
            None,
            None,
        ),
        (
            "Coverage (worst reference)",
            "The lowest coverage ratio over each relay's references.",
            f"min by (namespace, pod) (relay_coverage_ratio{{{ALL}}})",
            "percentunit",
            COVERAGE_STEPS,
            1,
        ),
    ]
    layout.row("Side by side")
    for title, description, expr, unit, steps, maximum in side_by_side:
        layout.add(
            timeseries(
                title,
                description,
                [(per_relay(expr), "{{namespace}}/{{relay}}")],
                unit=unit,
                minimum=0,
                maximum=maximum,
                steps=steps,
            ),
            12,
            8,
        )

    return dashboard(
        "atproto-relay-fleet",
        "ATProto relay fleet",
        "Every relay side by side; the per-relay dashboard (ATProto relay) has the details.",
        [
            datasource_variable(),
            query_variable(
                "namespace", "Namespace", "label_values(relay_seq_head, namespace)", multi=True, include_all=True
            ),
        ],
        layout.panels,
    )


def configmap(name, key, board):
    body = json.dumps(board, indent=2, sort_keys=False)
    indented = "\n".join(("    " + line) if line else "" for line in body.splitlines())
    return (
        "# Generated by config/dashboards/generate.py: edit that file, not this one.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {name}\n"
        "  labels:\n"
        '    grafana_dashboard: "1"\n'
        "    app.kubernetes.io/name: relay\n"
        "    app.kubernetes.io/component: dashboards\n"
        "  annotations:\n"
        "    grafana_folder: ATProto relays\n"
        "data:\n"
        f"  {key}: |\n"
        f"{indented}\n"
    )


OUTPUTS = {
    "relay-dashboard.yaml": lambda: configmap("relay-dashboard", "atproto-relay.json", relay_dashboard()),
    "fleet-dashboard.yaml": lambda: configmap("relay-fleet-dashboard", "atproto-relay-fleet.json", fleet_dashboard()),
}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for file, render in OUTPUTS.items():
        text = render()
        path = HERE / file
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(file)
        else:
            path.write_text(text)
    if stale:
        print(
            "config/dashboards: " + ", ".join(stale) + " differ from generate.py: run "
            "python3 config/dashboards/generate.py and commit the result",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
