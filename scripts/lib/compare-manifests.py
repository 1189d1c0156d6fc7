#!/usr/bin/env python3
"""Compares two renderings of Kubernetes objects (kustomize's and Helm's) object by object.

    compare-manifests.py EXPECTED.yaml ACTUAL.yaml [--only-expected KIND]... [--only-actual KIND]...

Objects are matched by (apiVersion group, kind, namespace, name) and compared whole, after
dropping what only Helm adds: the labels helm.sh/chart, app.kubernetes.io/managed-by,
app.kubernetes.io/instance and app.kubernetes.io/version (in metadata.labels, in selectors and
in pod template labels) and the annotation helm.sh/resource-policy. Everything else must be
equal: kinds, names, namespaces, every spec field, rules, env, probes, resources.
--only-expected KIND / --only-actual KIND: objects of KIND allowed on one side only (e.g. the
Namespace that config/manager renders and the chart leaves to `--create-namespace`).
Prints each difference as a unified diff of the normalised objects; exit 1 when any.
"""
import difflib
import sys

import yaml

HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
}
HELM_ANNOTATIONS = {"helm.sh/resource-policy"}


def strip_keys(mapping, keys):
    if not isinstance(mapping, dict):
        return mapping
    return {k: v for k, v in mapping.items() if k not in keys}


def clean_metadata(metadata, keys, annotations=()):
    if not isinstance(metadata, dict):
        return
    for field, drop in (("labels", keys), ("annotations", set(annotations))):
        if field in metadata:
            metadata[field] = strip_keys(metadata[field], drop)
            if not metadata[field]:
                del metadata[field]


def normalise(obj):
    clean_metadata(obj.get("metadata"), HELM_LABELS, HELM_ANNOTATIONS)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        selector = spec.get("selector")
        if isinstance(selector, dict):
            if "matchLabels" in selector:
                selector["matchLabels"] = strip_keys(selector["matchLabels"], HELM_LABELS)
            elif obj.get("kind") == "Service":
                spec["selector"] = strip_keys(selector, HELM_LABELS)
        template = spec.get("template")
        if isinstance(template, dict):
            clean_metadata(template.get("metadata"), HELM_LABELS)
    return obj


def key(obj):
    group = obj.get("apiVersion", "").rpartition("/")[0] or "core"
    metadata = obj.get("metadata") or {}
    return (group, obj.get("kind", "?"), metadata.get("namespace", ""), metadata.get("name", "?"))


def load(path):
    objects = {}
    with open(path) as f:
        for obj in yaml.safe_load_all(f):
            if not obj:
                continue
            k = key(obj)
            if k in objects:
                print(f"{path}: {'/'.join(k)} appears twice", file=sys.stderr)
                sys.exit(2)
            objects[k] = normalise(obj)
    return objects


def name(k):
    group, kind, namespace, obj_name = k
    return f"{kind}.{group} {namespace + '/' if namespace else ''}{obj_name}"


def main():
    args = sys.argv[1:]
    only = {"--only-expected": set(), "--only-actual": set()}
    files = []
    while args:
        a = args.pop(0)
        if a in only:
            only[a].add(args.pop(0))
        else:
            files.append(a)
    if len(files) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    expected, actual = load(files[0]), load(files[1])
    differences = 0
    for k in sorted(set(expected) | set(actual)):
        if k not in actual:
            if k[1] not in only["--only-expected"]:
                print(f"only in {files[0]}: {name(k)}")
                differences += 1
            continue
        if k not in expected:
            if k[1] not in only["--only-actual"]:
                print(f"only in {files[1]}: {name(k)}")
                differences += 1
            continue
        if expected[k] != actual[k]:
            differences += 1
            print(f"differs: {name(k)}")
            a = yaml.safe_dump(expected[k], sort_keys=True).splitlines()
            b = yaml.safe_dump(actual[k], sort_keys=True).splitlines()
            for line in difflib.unified_diff(a, b, files[0], files[1], lineterm="", n=2):
                print("    " + line)
    common = len(set(expected) & set(actual))
    if differences:
        print(f"{differences} difference(s) ({common} objects on both sides)")
        sys.exit(1)
    kinds = sorted({k[1] for k in set(expected) & set(actual)})
    print(f"same {common} objects ({', '.join(kinds)})")


if __name__ == "__main__":
    main()
