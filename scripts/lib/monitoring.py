#!/usr/bin/env python3
"""Helpers of scripts/check-monitoring.sh (dashboards, PrometheusRules, metric names).

    monitoring.py extract-rules RULE.yaml OUT.rules.yaml   PrometheusRule -> plain rules file
    monitoring.py mutate-rules RULES.yaml ALERT OUT.yaml    the same rules with ALERT never firing
    monitoring.py dashboards DIR                            check the ConfigMaps; print their exprs (JSON)
    monitoring.py rule-exprs RULES.yaml...                  print the rules' exprs (JSON)
    monitoring.py check-names METRICS_FILE SELECTORS.json   every metric used exists in METRICS_FILE
    monitoring.py check-parse SELECTORS.json                every expression parsed

Needs PyYAML (Debian: python3-yaml; check-monitoring.sh installs it when missing).
"""

import json
import re
import sys
from pathlib import Path

import yaml

# Series from other exporters, exempt from the relay /metrics check. Listed one by one on
# purpose: a container_*/kube_* name that is not here fails the check like any other.
EXTERNAL = {
    # cAdvisor (kubelet /metrics/cadvisor)
    "container_memory_working_set_bytes": "cAdvisor",
    # kube-state-metrics
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_pod_status_ready": "kube-state-metrics",
    "kube_pod_container_info": "kube-state-metrics",
    "kube_pod_owner": "kube-state-metrics",
}

# Labels that Prometheus and the ServiceMonitor add to every scraped series (not in /metrics).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "endpoint"}

# Grafana variables, replaced by sample values so that Prometheus's parser reads the query.
GRAFANA_MACROS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def load_prometheus_rules(path):
    documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    rules = [d for d in documents if d.get("kind") == "PrometheusRule"]
    if not rules:
        fail(f"{path}: no PrometheusRule object")
    for rule in rules:
        if rule.get("apiVersion") != "monitoring.coreos.com/v1":
            fail(f"{path}: PrometheusRule apiVersion must be monitoring.coreos.com/v1")
    return rules


def extract_rules(source, out):
    groups = []
    for rule in load_prometheus_rules(source):
        groups.extend(rule["spec"]["groups"])
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                labels = rule.get("labels", {})
                annotations = rule.get("annotations", {})
                if labels.get("severity") not in ("critical", "warning", "info"):
                    fail(f"{source}: alert {rule['alert']} needs a severity label (critical, warning or info)")
                for key in ("summary", "description", "runbook"):
                    if not annotations.get(key):
                        fail(f"{source}: alert {rule['alert']} needs a {key} annotation")
    Path(out).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=10000))


def mutate_rules(source, alert, out):
    data = yaml.safe_load(Path(source).read_text())
    found = False
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(1) == 0"
                found = True
    if not found:
        fail(f"{source}: no alert {alert}")
    Path(out).write_text(yaml.safe_dump(data, sort_keys=False, width=10000))


def rule_exprs(paths):
    exprs = []
    for path in paths:
        data = yaml.safe_load(Path(path).read_text())
        for group in data["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                exprs.append({"source": f"rule {name}", "expr": rule["expr"]})
    return exprs


def substitute_variables(expr):
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    # $var and ${var} (also ${var:format}) as plain text: they only stand in label values here.
    expr = re.sub(r"\$\{(\w+)(?::\w+)?\}", r"\1", expr)
    return re.sub(r"\$(\w+)", r"\1", expr)


LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)


def panel_list(panels):
    for panel in panels:
        yield panel
        yield from panel_list(panel.get("panels", []))


def dashboards(directory):
    """Checks every dashboard ConfigMap and returns the PromQL of its panels and variables."""
    exprs = []
    uids = {}
    configmaps = 0
    for path in sorted(Path(directory).glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "ConfigMap":
                continue
            configmaps += 1
            name = document["metadata"]["name"]
            where = f"{path.name} ({name})"
            if document["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
                fail(f"{where}: the Grafana sidecar label grafana_dashboard: \"1\" is missing")
            data = document.get("data") or {}
            if not data:
                fail(f"{where}: no dashboard in data")
            for key, text in data.items():
                if not key.endswith(".json"):
                    fail(f"{where}: data key {key} should end in .json (the sidecar writes it as a file)")
                try:
                    board = json.loads(text)
                except json.JSONDecodeError as error:
                    fail(f"{where}: {key} is not valid JSON: {error}")
                source = f"dashboard {board.get('title', key)}"
                for field in ("uid", "title", "panels", "schemaVersion"):
                    if field not in board:
                        fail(f"{where}: {key} has no {field}")
                if board["uid"] in uids:
                    fail(f"{where}: dashboard uid {board['uid']} also used in {uids[board['uid']]}")
                uids[board["uid"]] = where
                ids = set()
                for panel in panel_list(board["panels"]):
                    title = panel.get("title", "?")
                    if panel.get("id") in ids:
                        fail(f"{where}: panel id {panel.get('id')} used twice")
                    ids.add(panel.get("id"))
                    if "gridPos" not in panel:
                        fail(f"{where}: panel {title} has no gridPos")
                    if panel.get("type") != "row" and not panel.get("targets"):
                        fail(f"{where}: panel {title} has no query")
                    for target in panel.get("targets", []):
                        if not target.get("expr"):
                            fail(f"{where}: panel {title} has a target without expr")
                        exprs.append(
                            {"source": f"{source} / {title}", "expr": substitute_variables(target["expr"])}
                        )
                for variable in board.get("templating", {}).get("list", []):
                    if variable.get("type") != "query":
                        continue
                    query = variable.get("query")
                    if isinstance(query, dict):
                        query = query.get("query", "")
                    match = LABEL_VALUES.match(query or "")
                    if match:
                        query = match.group(1)
                    exprs.append(
                        {"source": f"{source} / variable {variable['name']}", "expr": substitute_variables(query)}
                    )
    if not configmaps:
        fail(f"{directory}: no dashboard ConfigMap")
    return exprs


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s")
LABEL_NAME = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def parse_metrics(path):
    """Names in a /metrics text exposition, with the label names seen on each."""
    families = {}  # name from # TYPE -> type
    samples = {}  # sample name -> label names
    for line in Path(path).read_text().splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                families[parts[2]] = parts[3]
        elif line.startswith("# HELP "):
            parts = line.split()
            if len(parts) >= 3:
                families.setdefault(parts[2], "untyped")
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            if match:
                labels = set(LABEL_NAME.findall(match.group(3) or ""))
                samples.setdefault(match.group(1), set()).update(labels)
    names = set(samples)
    for family, kind in families.items():
        names.add(family)
        if kind in ("histogram", "summary"):
            names.update(f"{family}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names, samples, families


def check_names(metrics_file, selectors_file):
    names, samples, families = parse_metrics(metrics_file)
    if not names:
        fail(f"{metrics_file}: no metrics in it (is it the output of a relay's /metrics?)")
    results = json.loads(Path(selectors_file).read_text())
    problems = []
    missing = {}
    used = set()
    for result in results:
        if result.get("error"):
            problems.append(f"{result['source']}: PromQL does not parse: {result['error']}\n    {result['expr']}")
            continue
        for unnamed in result.get("unnamed") or []:
            problems.append(f"{result['source']}: selector without a metric name: {unnamed}")
        for selector in result["selectors"]:
            name = selector["name"]
            used.add(name)
            if name in EXTERNAL:
                continue
            if name.startswith(("container_", "kube_")):
                problems.append(
                    f"{result['source']}: {name} is not a relay metric and not in the list of external "
                    "metrics (EXTERNAL in scripts/lib/monitoring.py)"
                )
                continue
            if name not in names:
                missing.setdefault(name, set()).add(result["source"])
                continue
            # Label names: checked when the metric has samples (a labelled metric shows its labels).
            seen = samples.get(name)
            if seen is None:
                continue
            for matcher in selector["matchers"]:
                label = matcher["label"]
                if label in TARGET_LABELS or label in seen:
                    continue
                problems.append(f"{result['source']}: {name} has no label {label} (it has: {', '.join(sorted(seen)) or 'no labels'})")
    for name in sorted(missing):
        where = sorted(missing[name])
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        problems.append(f"{name}: not in {metrics_file} (used by {shown})")
    external_used = sorted(n for n in used if n in EXTERNAL)
    relay_used = sorted(n for n in used if n not in EXTERNAL)
    if problems:
        print(f"metric names: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if missing:
            print(
                "  A labelled metric (a *Vec) prints nothing in /metrics, not even # HELP/# TYPE, until its\n"
                "  first label value is used. Names that are real but missing here need the relay to create\n"
                "  their label values at start (with_label_values(...) for each known value), or a metrics\n"
                "  file from a relay that has done the work.",
                file=sys.stderr,
            )
        sys.exit(1)
    print(
        f"metric names: {len(relay_used)} relay metrics used by dashboards and rules, all in {metrics_file}; "
        f"external (not checked): {', '.join(external_used)}"
    )


def check_parse(selectors_file):
    bad = [r for r in json.loads(Path(selectors_file).read_text()) if r.get("error")]
    for result in bad:
        print(f"{result['source']}: PromQL does not parse: {result['error']}", file=sys.stderr)
    if bad:
        sys.exit(1)


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "extract-rules" and len(args) == 2:
        extract_rules(*args)
    elif command == "mutate-rules" and len(args) == 3:
        mutate_rules(*args)
    elif command == "dashboards" and len(args) == 1:
        print(json.dumps(dashboards(args[0]), indent=1))
    elif command == "rule-exprs" and args:
        print(json.dumps(rule_exprs(args), indent=1))
    elif command == "check-parse" and len(args) == 1:
        check_parse(*args)
    elif command == "check-names" and len(args) == 2:
        check_names(*args)
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
