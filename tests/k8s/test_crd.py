"""The RazorJob CRD (crds/razorjob.yaml) against a real kube-apiserver, with the real kubectl.

Which tests/bad_specs files the API server can refuse (BAD_FOR_THE_API_SERVER below) and which
only razorctl (and the operator) can:

- refused before anything reaches the API server, by kubectl itself (not a RazorJob it can send):
  empty.yaml (no document), invalid-yaml.yaml (not YAML), not-a-mapping.yaml (a list),
  no-metadata.yaml (no name, so kubectl apply cannot look the object up), wrong-api-version.yaml
  and wrong-kind.yaml (no such kind is served: kubectl finds no mapping);
- a whole-file check: two-documents.yaml (kubectl applies both documents);
- what the CRD schema cannot express, so the API server stores them:
  cfg-key-malformed.yaml and scale-lr-both.yaml / scale-lr-zero.yaml (cfgOptions's values and
  autoScaleLR are untyped in a structural schema, and CEL rules cannot see untyped fields),
  port-disagrees.yaml (compares port with a cfgOptions value, untyped too), and
  resources-not-quantity.yaml (requests/limits are plain strings in the schema); and the SLURM
  fields that mean nothing on Kubernetes and that a pattern cannot check: slurm.mem (an
  int-or-string), slurm.constraint (balanced parentheses), slurm.sbatchArgs (the options razor
  sets itself). razorctl refuses them before submitting.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_cluster import ROOT, ControlPlane
from razor.spec import CLUSTER_DEFAULTS, MUTABLE_FIELDS, parse_job

pytestmark = pytest.mark.k8s

BAD_SPECS = ROOT / "tests" / "bad_specs"
EXAMPLE = ROOT / "examples" / "razorjob-digits-kd.yaml"

BAD_FOR_THE_API_SERVER = [
    "args-without-script.yaml",
    "config-with-newline.yaml",
    "env-bad-name.yaml",
    "env-cuda-on-cpu.yaml",
    "env-nested-value.yaml",
    "env-reserved.yaml",
    "gpus-negative.yaml",
    "many-errors.yaml",
    "name-not-dns.yaml",
    "name-too-long.yaml",
    "nnodes-word.yaml",
    "nnodes-zero.yaml",
    "no-config-no-script.yaml",
    "nproc-over-gpus.yaml",
    "port-privileged.yaml",
    "port-word.yaml",
    "slurm-bad-time.yaml",
    "slurm-hostile-partition.yaml",
    "spec-not-mapping.yaml",
    "unknown-field.yaml",
]
REFUSED_BY_KUBECTL = ["empty.yaml", "invalid-yaml.yaml", "not-a-mapping.yaml", "no-metadata.yaml",
                      "wrong-api-version.yaml", "wrong-kind.yaml"]
STORED_BY_THE_API_SERVER = ["cfg-key-malformed.yaml", "port-disagrees.yaml", "resources-not-quantity.yaml",
                            "scale-lr-both.yaml", "scale-lr-zero.yaml", "two-documents.yaml",
                            "slurm-constraint-unbalanced.yaml", "slurm-mem-not-size.yaml",
                            "slurm-sbatch-args-reserved.yaml"]

# Where the API server names a field differently from razorctl: what its message says instead.
APISERVER_NAMES = {
    # razorctl names the map, the schema the offending value.
    "env-nested-value.yaml": ['spec.env.FOO: Invalid value'],
    # The name rule sits at the root (the only place that sees metadata.name), so the API server
    # gives no field path ("<nil>: Invalid value: ..."); the message names the field.
    "name-too-long.yaml": ["metadata.name must be a DNS label of at most 50 characters"],
    # Strict field validation stops at the unknown field, before the schema's checks run.
    "many-errors.yaml": ['unknown field "spec.nnode"'],
}


def expected_fields(path: Path) -> list[str]:
    """The field paths of the file's ``# expect: <field path>: <message>`` lines."""
    fields = []
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*expect:\s*([A-Za-z][\w.\[\]]*):(\s|$)", line)
        if m:
            fields.append(m.group(1))
    return fields


def names_field(stderr: str, field: str) -> bool:
    """The API server's error names ``field``: '<field>: Invalid value' or 'unknown field "<field>"'."""
    return (re.search(rf'(^|[\s*]){re.escape(field)}: Invalid value', stderr, re.M) is not None
            or f'unknown field "{field}"' in stderr)


def razorjobs(cluster: ControlPlane, namespace: str) -> list[str]:
    return cluster.kubectl("get", "razorjobs", "-n", namespace, "-o", "name").stdout.split()


def stored(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "razorjob", name, "-n", namespace, "-o", "json").stdout)


# ---------------------------------------------------------------------------------------- the CRD


def test_crd_is_established_and_served(cluster: ControlPlane, namespace: str):
    crd = json.loads(cluster.kubectl("get", "crd", "razorjobs.razor.dev", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["rj"]

    assert cluster.kubectl("get", "razorjobs", "-n", namespace).returncode == 0
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    by_plural = cluster.kubectl("get", "razorjobs", "-n", namespace, "-o", "name").stdout.split()
    by_short = cluster.kubectl("get", "rj", "-n", namespace, "-o", "name").stdout.split()
    assert by_plural == by_short == ["razorjob.razor.dev/digits-kd"]
    # The printer columns: Nodes and GPUs come from the spec; -o wide adds the attempt and the message;
    # PROGRESS (status.progress.percent) is empty until rank 0 reports.
    table = cluster.kubectl("get", "rj", "digits-kd", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "NODES", "GPUS", "RUNNING", "RESTARTS", "COUNTED",
                                "AGE"]
    assert table[1].split()[:3] == ["digits-kd", "2", "0"]
    wide = cluster.kubectl("get", "rj", "digits-kd", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["ATTEMPT", "MESSAGE"]
    # In the "all" category.
    assert "razorjob.razor.dev/digits-kd" in cluster.kubectl(
        "get", "all", "-n", namespace, "-o", "name").stdout.split()


def test_explain_shows_the_field_descriptions(cluster: ControlPlane):
    out = cluster.kubectl("explain", "razorjob.spec.nnodes").stdout
    assert "Number of nodes (one torchrun each)." in out
    assert "<integer>" in out
    spec = cluster.kubectl("explain", "razorjob.spec").stdout
    assert "gpusPerNode" in spec and "GPUs per node; 0 trains on CPU (gloo)." in spec


# ------------------------------------------------------------------------------------ defaults


def test_the_example_is_stored_with_the_defaults_filled(cluster: ControlPlane, namespace: str):
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    spec = stored(cluster, namespace, "digits-kd")["spec"]
    # Given in the file.
    assert spec["nnodes"] == 2 and spec["port"] == "auto" and spec["gpusPerNode"] == 0
    assert spec["cfgOptions"] == {"schedule.epochs": 20}
    # Filled by the API server from the schema's defaults.
    assert spec["autoScaleLR"] is True and spec["resume"] == "auto"
    assert spec["suspend"] is False and spec["hostNetwork"] is False
    # Left for the operator to fill in (its --defaults, the chart's `defaults`, else razor's).
    given = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert set(CLUSTER_DEFAULTS) & set(spec) == set(CLUSTER_DEFAULTS) & set(given) == {"port"}
    # Objects have no default of their own: an absent one stays absent (its fields default inside).
    assert "slurm" not in spec and "resources" not in spec


def test_a_minimal_job_gets_the_same_defaults_as_razorctl_gives(cluster: ControlPlane, namespace: str):
    doc = {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": "minimal"},
           "spec": {"config": "trainer/configs/digits_mlp.yaml"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    spec = stored(cluster, namespace, "minimal")["spec"]
    assert spec["gpusPerNode"] == 0 and spec["nnodes"] == 1
    # Every value the API server filled in is the one razorctl fills in, and it fills in all but
    # the fields a cluster may default.
    filled = parse_job(doc).to_dict()["spec"]
    assert {k: v for k, v in filled.items() if k in spec} == spec
    assert not set(CLUSTER_DEFAULTS) & set(spec)


# ------------------------------------------------------------------------------------ bad specs


def test_enough_bad_specs_reach_the_api_server():
    assert len(BAD_FOR_THE_API_SERVER) >= 12
    every = {p.name for p in BAD_SPECS.glob("*.yaml")}
    listed = set(BAD_FOR_THE_API_SERVER) | set(REFUSED_BY_KUBECTL) | set(STORED_BY_THE_API_SERVER)
    assert listed == every, "sort the new bad_specs file into one of the lists"


@pytest.mark.parametrize("name", BAD_FOR_THE_API_SERVER)
def test_the_api_server_refuses_a_bad_spec_naming_the_field(cluster: ControlPlane, namespace: str,
                                                            name: str):
    path = BAD_SPECS / name
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert out.returncode != 0, f"{name} was accepted: {out.stdout}"
    err = out.stderr
    assert "is invalid" in err or "strict decoding error" in err, err  # the API server's answer
    if name in APISERVER_NAMES:
        for text in APISERVER_NAMES[name]:
            assert text in err, f"{name}: expected {text!r} in:\n{err}"
    else:
        fields = expected_fields(path)
        assert fields, f"{name} has no '# expect: <field>: <message>' line"
        for field in fields:
            assert names_field(err, field), f"{name}: {field} not named in:\n{err}"
    assert razorjobs(cluster, namespace) == []


def test_with_field_validation_warn_every_schema_error_is_named(cluster: ControlPlane, namespace: str):
    """many-errors.yaml without strict decoding: the unknown field is a warning, the rest errors."""
    path = BAD_SPECS / "many-errors.yaml"
    out = cluster.kubectl("apply", "--validate=warn", "-n", namespace, "-f", str(path), check=False)
    assert out.returncode != 0
    assert 'unknown field "spec.nnode"' in out.stderr
    for field in ("spec.nnodes", "spec.port", "spec.slurm.cpusPerTask"):
        assert names_field(out.stderr, field), f"{field} not named in:\n{out.stderr}"


@pytest.mark.parametrize("name", REFUSED_BY_KUBECTL)
def test_kubectl_refuses_what_is_no_razorjob(cluster: ControlPlane, namespace: str, name: str):
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(BAD_SPECS / name), check=False)
    assert out.returncode != 0, out.stdout
    assert razorjobs(cluster, namespace) == []


@pytest.mark.parametrize("name", STORED_BY_THE_API_SERVER)
def test_what_only_razorctl_refuses_is_stored(cluster: ControlPlane, namespace: str, name: str):
    """The schema's known gaps: if one starts failing, the CRD learnt a check; move the file."""
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(BAD_SPECS / name),
                          check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("field", ["permanentExitCodes", "retryableExitCodes"])
@pytest.mark.parametrize("codes", [[0], [2, 256]])
def test_exit_codes_out_of_range_are_refused(cluster: ControlPlane, namespace: str, codes: list[int], field: str):
    doc = {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": "codes"},
           "spec": {"config": "trainer/configs/digits_mlp.yaml", field: codes}}
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0
    assert names_field(out.stderr, f"spec.{field}[{len(codes) - 1}]"), out.stderr


# ------------------------------------------------------------------------------ immutable fields


def _patch(cluster: ControlPlane, namespace: str, spec: dict[str, Any]):
    return cluster.kubectl("patch", "razorjob", "digits-kd", "-n", namespace, "--type=merge",
                           "-p", json.dumps({"spec": spec}), check=False)


@pytest.mark.parametrize("change", [
    {"nnodes": 3}, {"gpusPerNode": 1}, {"image": "razor-trainer:other"}, {"port": 29501},
    {"cfgOptions": {"schedule.epochs": 3}}, {"env": {"EXTRA": "1"}}, {"volumes": [{"name": "d", "emptyDir": {}}]},
    {"terminationGracePeriodSeconds": 30}, {"nodeLostTimeoutSeconds": 5}, {"slurm": {"partition": "gpu"}},
    {"autoScaleLR": False},  # no schema type: seen only through the spec as a whole
])
def test_a_running_gang_cannot_be_changed_into_a_mixed_one(cluster: ControlPlane, namespace: str,
                                                            change: dict[str, Any]):
    """Every field but the mutable ones is refused by the API server, naming the field."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    before = stored(cluster, namespace, "digits-kd")["spec"]
    out = _patch(cluster, namespace, change)
    assert out.returncode != 0, out.stdout
    field = next(iter(change))
    assert f"spec.{field}: Forbidden: cannot change once the job exists: every rank of a gang must run the " \
           "same spec" in out.stderr, out.stderr
    assert stored(cluster, namespace, "digits-kd")["spec"] == before


def test_kubectl_apply_of_an_edited_file_names_the_field(cluster: ControlPlane, namespace: str):
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["nnodes"] = 4
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0 and "spec.nnodes: Forbidden: cannot change once the job exists" in out.stderr
    assert "delete the job and create it again" in out.stderr


def test_the_fields_meant_to_change_can_change(cluster: ControlPlane, namespace: str):
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    change = {"suspend": True, "ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 3600, "backoffLimit": 6,
              "permanentExitCodes": [3], "retryableExitCodes": [124], "restartBackoffSeconds": 1,
              "restartBackoffMaxSeconds": 30}
    out = _patch(cluster, namespace, change)
    assert out.returncode == 0, out.stderr
    spec = stored(cluster, namespace, "digits-kd")["spec"]
    assert {k: spec[k] for k in change} == change
    assert set(change) == set(MUTABLE_FIELDS)
    # and back again, and the status and the metadata as ever
    assert _patch(cluster, namespace, {"suspend": False, "ttlSecondsAfterFinished": None}).returncode == 0
    cluster.kubectl("patch", "razorjob", "digits-kd", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Running"}}))
    cluster.kubectl("label", "razorjob", "digits-kd", "-n", namespace, "team=vision")


# ---------------------------------------------------------------------------- garbage collection


def _owned_configmap(name: str, owner: dict[str, Any]) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "data": {"k": "v"},
    })


def test_deleting_a_razorjob_collects_what_it_owns(cluster: ControlPlane, namespace: str):
    for job in ("doomed", "kept"):
        doc = {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": job},
               "spec": {"config": "trainer/configs/digits_mlp.yaml"}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
        owner = stored(cluster, namespace, job)
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_owned_configmap(f"{job}-cm", owner))

    cluster.kubectl("delete", "razorjob", "doomed", "-n", namespace)
    gone = cluster.kubectl("wait", "--for=delete", "configmap/doomed-cm", "-n", namespace,
                           "--timeout=30s", check=False, timeout=45)
    assert gone.returncode == 0, f"the owned ConfigMap was not collected in 30s: {gone.stderr}"
    # The other job's ConfigMap stays.
    assert cluster.kubectl("get", "configmap", "kept-cm", "-n", namespace, "-o", "name").stdout.strip() \
        == "configmap/kept-cm"

