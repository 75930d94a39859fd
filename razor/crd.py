"""The RazorJob CustomResourceDefinition, generated from the spec model.

    python -m razor.crd > crds/razorjob.yaml

The schema is the spec model's JSON schema made structural (refs inlined, unions turned into
int-or-string or preserved fields), with CEL rules for what a schema cannot say, so that the
API server refuses what razorctl refuses, and CEL transition rules that keep every spec field but
razor.spec.MUTABLE_FIELDS as the job was created (no gang of pods from two specs). A test fails
when crds/razorjob.yaml is stale.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from .spec import CLUSTER_DEFAULTS, CONTRACT_ENV, GROUP, KIND, MUTABLE_FIELDS, NAME_MAX, VERSION, RazorJobSpec

PLURAL = "razorjobs"
SINGULAR = "razorjob"
SHORT_NAMES = ["rj"]

_NO_NEWLINES = r"^[^\n\r]*$"

# CEL rules: the checks of razor/spec.py's validators that a schema alone cannot express.
_SPEC_RULES = [
    {"rule": "has(self.config) || has(self.script)",
     "message": "give config (the built-in trainer) or script (your own)"},
    {"rule": "!has(self.args) || size(self.args) == 0 || has(self.script)",
     "message": "args is only for script; use cfgOptions to change the trainer's config"},
    {"rule": "!has(self.nprocPerNode) || self.gpusPerNode == 0 || self.nprocPerNode <= self.gpusPerNode",
     "message": "nprocPerNode cannot exceed gpusPerNode: one process per GPU"},
    # razor.launcher.env_refusal: a CPU job's CUDA_VISIBLE_DEVICES is the contract's (-1).
    {"rule": "!has(self.env) || !('CUDA_VISIBLE_DEVICES' in self.env) || self.gpusPerNode > 0",
     "fieldPath": ".env",
     "message": "CUDA_VISIBLE_DEVICES is set by razor for a CPU job (gpusPerNode 0 means "
                "CUDA_VISIBLE_DEVICES=-1) and cannot be overridden; give the job GPUs to choose them"},
]
_FIELD_RULES: dict[str, list[dict[str, str]]] = {
    "port": [{
        "rule": "type(self) == int ? (self >= 1024 && self <= 65535) : self == 'auto'",
        "message": "must be between 1024 and 65535, or 'auto'",
    }],
    # Not here, because the API server cannot compile them (razorctl and the operator check them):
    # - autoScaleLR (true, false or a mapping) has no type in a structural schema, and CEL sees no
    #   untyped field ("failed to convert to declType for CEL validation rules");
    # - cfgOptions's values are anything, so CEL sees it as an object without fields, not a map
    #   ("cannot be range of a comprehension").
    "env": [
        {"rule": "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
         "message": "names must be valid environment variable names"},
        # Map lookups, not a scan of the keys: a scan of an unbounded map exceeds the rule cost budget.
        {"rule": "!(" + " || ".join(f"'{k}' in self" for k in sorted(CONTRACT_ENV)) + ")",
         "message": "the launcher contract's variables are set by razor and cannot be overridden"},
    ],
}
# Bounds of array items: cheaper than a CEL rule over the list (which exceeds the cost budget).
_ITEM_BOUNDS = {"permanentExitCodes": {"minimum": 1, "maximum": 255},
                "retryableExitCodes": {"minimum": 1, "maximum": 255}}
#: What the API server says of a change to a field that cannot change (after "spec.<field>: Forbidden: ").
IMMUTABLE = ("cannot change once the job exists: every rank of a gang must run the same spec (delete "
             "the job and create it again; only " + ", ".join(MUTABLE_FIELDS) + " can change)")
_STRING_PATTERNS = {
    "config": _NO_NEWLINES, "workDir": _NO_NEWLINES, "script": _NO_NEWLINES, "resume": _NO_NEWLINES,
    "workingDir": _NO_NEWLINES, "image": r"^\S+$",
    "partition": r"^[A-Za-z0-9_.+-]+$", "account": r"^[A-Za-z0-9_.+-]+$", "qos": r"^[A-Za-z0-9_.+-]+$",
    "jobName": r"^[A-Za-z0-9_.+-]+$", "time": r"^((\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+|UNLIMITED|INFINITE)$",
    "shmSize": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$",
}


def _structural(node: dict[str, Any], defs: dict[str, Any], name: str = "") -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**copy.deepcopy(target), **node}
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # not structural; unknown fields are refused anyway
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        kept = {k: v for k, v in node.items() if k in ("description", "default")}
        if len(options) == 1:
            node = {**_structural(options[0], defs, name), **kept}
        elif {o.get("type") for o in options} == {"integer", "string"}:
            node = {"x-kubernetes-int-or-string": True, **kept}
        else:  # a boolean or a mapping, say: the field's CEL rule checks the shape
            node = {"x-kubernetes-preserve-unknown-fields": True, **kept}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default") is None:
        node.pop("default", None)
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        if props:
            node["properties"] = {k: _structural(v, defs, k) for k, v in props.items()}
            # Object defaults come from their fields' own defaults.
            node.pop("default", None)
        elif isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"]:
            node["additionalProperties"] = _structural(node["additionalProperties"], defs)
        else:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
        if node.get("default") == {}:
            node.pop("default")
    elif kind == "array":
        node["items"] = _structural(node.get("items", {}), defs)
        if node["items"] == {}:
            node["items"] = {"x-kubernetes-preserve-unknown-fields": True}
        node["items"].update(_ITEM_BOUNDS.get(name, {}))
        if node.get("default") == []:
            node.pop("default")
    elif not kind and not any(k.startswith("x-kubernetes") for k in node):
        node["x-kubernetes-preserve-unknown-fields"] = True  # Any
    if kind == "string" and name in _STRING_PATTERNS:
        node["pattern"] = _STRING_PATTERNS[name]
    if name in _FIELD_RULES:
        node["x-kubernetes-validations"] = _FIELD_RULES[name]
    return node


def _unchanged(name: str) -> str:
    """CEL: the spec field is as it was (present in both with the same value, or in neither)."""
    return f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"


def immutability_rules(properties: dict[str, Any]) -> list[dict[str, str]]:
    """Transition rules (run on updates only) that keep every spec field but MUTABLE_FIELDS as it
    was created, each naming its field. A field without a type (autoScaleLR: true, false or a
    mapping) is invisible to CEL; the spec as a whole is not: when no field CEL sees changed, the
    spec must not have changed either, which names such a field."""
    rules, seen = [], []
    untyped = []
    for name, node in properties.items():
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            untyped.append(name)
            continue
        seen.append(name)
        if name not in MUTABLE_FIELDS:
            rules.append({"rule": _unchanged(name), "message": IMMUTABLE, "fieldPath": f".{name}",
                          "reason": "FieldValueForbidden"})
    for name in untyped:
        if name not in MUTABLE_FIELDS:
            rules.append({"rule": "!(" + " && ".join(f"({_unchanged(n)})" for n in seen) + ") || self == oldSelf",
                          "message": IMMUTABLE, "fieldPath": f".{name}", "reason": "FieldValueForbidden"})
    return rules


def spec_schema() -> dict[str, Any]:
    schema = RazorJobSpec.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    out = _structural(schema, defs)
    out.pop("required", None)
    for key in CLUSTER_DEFAULTS:  # the operator fills these in: its --defaults, else the model's
        out["properties"][key].pop("default", None)
    out["x-kubernetes-validations"] = _SPEC_RULES + immutability_rules(out["properties"])
    return out


def status_schema() -> dict[str, Any]:
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"}, "status": {"type": "string"}, "reason": {"type": "string"},
            "message": {"type": "string"}, "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    rank = {"type": "object", "properties": {
        "rank": {"type": "integer"}, "pod": {"type": "string"}, "phase": {"type": "string"},
        "exitCode": {"type": "integer"}, "reason": {"type": "string"}, "node": {"type": "string"}}}
    failed_rank = {"type": "object", "properties": {
        "rank": {"type": "integer"}, "attempt": {"type": "integer"}, "pod": {"type": "string"},
        "exitCode": {"type": "integer"}, "reason": {"type": "string"},
        "class": {"type": "string", "description": "Permanent, Failure, Retryable or Disruption"},
        "node": {"type": "string"}, "finishedAt": {"type": "string", "format": "date-time"},
        "message": {"type": "string"}}}
    number = {"type": "number", "minimum": 0}
    count = {"type": "integer", "minimum": 0}
    progress = {
        "type": "object",
        "description": "How far the training is, as its rank 0 last reported it (razor.progress; "
                       "Kubeflow Trainer's trainerStatus is the model).",
        "properties": {
            "stage": {"type": "string", "description": "What it does now: train, val, save, ..."},
            "epoch": count, "epochs": count, "step": count, "steps": count,
            "percent": {**number, "maximum": 100, "description": "Of the whole training."},
            "etaSeconds": {**number, "description": "Estimated seconds left."},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"},
                        "description": "The last values of the training's metrics (loss, accuracy, ...)."},
            "samplesPerSecond": number,
            "lastUpdateTime": {"type": "string", "format": "date-time"},
            "attempt": {"type": "integer", "description": "The attempt that reported it."},
        },
    }
    by_phase = {"type": "object", "description": "The attempt's ranks by phase (pending: not running yet).",
                "properties": {k: {"type": "integer"} for k in ("pending", "running", "succeeded", "failed")}}
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,  # kopf keeps its own progress here
        "properties": {
            "phase": {"type": "string"},
            "message": {"type": "string"},
            "attempt": {"type": "integer"},
            "restarts": {"type": "integer", "description": "Gang restarts, all of them."},
            "countedRestarts": {"type": "integer",
                                "description": "Restarts counted against backoffLimit (after a failure)."},
            "disruptionRestarts": {"type": "integer", "description": "Restarts after a preemption, an "
                                                                     "eviction, a lost node or pod: not counted."},
            "nextAttemptTime": {"type": "string", "format": "date-time",
                                "description": "When the next attempt starts (the restart backoff)."},
            "port": {"type": "integer"},
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
            "conditions": {"type": "array", "items": condition,
                           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            "ranksByPhase": by_phase,
            "progress": progress,
            "ranks": {"type": "array", "items": rank,
                      "description": "At most 32 of the attempt's ranks, the most telling: every rank of a small job."},
            "failedRanks": {"type": "array", "items": failed_rank,
                            "description": "The failed or lost ranks of the last attempt that failed (at most "
                                           "32), the one that decided first."},
        },
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "razor"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": SINGULAR, "shortNames": SHORT_NAMES, "categories": ["all"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent",
                     "description": "Percent of the training done, as rank 0 last reported it"},
                    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nnodes"},
                    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpusPerNode",
                     "description": "GPUs per node"},
                    {"name": "Running", "type": "integer", "jsonPath": ".status.ranksByPhase.running",
                     "description": "Ranks running"},
                    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts",
                     "description": "Gang restarts, all of them"},
                    {"name": "Counted", "type": "integer", "jsonPath": ".status.countedRestarts",
                     "description": "Restarts counted against backoffLimit"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
                    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A distributed PyTorch training: one torchrun per node, run as a gang.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    "x-kubernetes-validations": [{
                        "rule": f"size(self.metadata.name) <= {NAME_MAX} && "
                                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                        "message": f"metadata.name must be a DNS label of at most {NAME_MAX} characters "
                                   "starting with a letter",
                    }],
                }},
            }],
        },
    }


def render() -> str:
    header = "# Generated by `python -m razor.crd` from razor/spec.py: do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
