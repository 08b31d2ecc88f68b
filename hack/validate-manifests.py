#!/usr/bin/env python3
"""Validates Kubernetes YAML files (multi-document) offline, strictly:

* built-in kinds against the Kubernetes 1.33 JSON schemas of the PyPI package
  kubernetes-validate, rejecting unknown fields;
* wopr.dev kinds against the openAPIV3Schema of the CRDs in crds/, also
  rejecting unknown fields (the API server would silently prune them, and a
  silently dropped restriction is a security bug);
* kinds of other CRDs (ServiceMonitor) are reported as skipped.

Usage: hack/validate-manifests.py FILE... (exit 1 on the first invalid file,
after reporting every invalid object).
"""

import copy
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
ROOT = os.path.join(os.path.dirname(__file__), "..")
SKIPPED_GROUPS = {"monitoring.coreos.com"}


def strict(schema):
    """The CRD schema with unknown fields forbidden wherever it lists properties."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def crd_schemas():
    """(apiVersion, kind) -> JSON schema of the object, from crds/."""
    schemas = {}
    for path in glob.glob(os.path.join(ROOT, "crds", "*.yaml")):
        with open(path) as f:
            crd = yaml.safe_load(f)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are the API server's: types only.
            properties = schema.setdefault("properties", {})
            properties.update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def describe(document):
    metadata = document.get("metadata") or {}
    return f"{document.get('kind')}/{metadata.get('name')}"


def validate(document, schemas):
    """An error message, or None when the object is valid; 'skipped' for unknown CRDs."""
    api_version, kind = document.get("apiVersion", ""), document.get("kind", "")
    key = (api_version, kind)
    if key in schemas:
        try:
            jsonschema.validate(document, schemas[key])
        except jsonschema.ValidationError as error:
            path = ".".join(str(p) for p in error.absolute_path)
            return f"{path or '<root>'}: {error.message}"
        return None
    if api_version.split("/")[0] in SKIPPED_GROUPS:
        return "skipped"
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return f"{path or '<root>'}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        return f"no Kubernetes {KUBERNETES_VERSION} schema: {error}"
    return None


def main(paths):
    schemas = crd_schemas()
    invalid = 0
    for path in paths:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        failed = 0
        for document in documents:
            result = validate(document, schemas)
            if result == "skipped":
                print(f"skip {path}: {describe(document)} (no schema for {document['apiVersion']})")
            elif result:
                failed += 1
                print(f"FAIL {path}: {describe(document)}: {result}")
        if not failed:
            print(f"ok   {path}: {len(documents)} objects")
        invalid += failed
    if invalid:
        print(f"{invalid} invalid object(s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
