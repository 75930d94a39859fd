"""Gang scheduling with the real kube-scheduler: a 4-node job on a node with room for 3 of its
pods. The room is an extended resource the node advertises (its status capacity patched to
``example.com/slot: 3``, as the Kubernetes docs describe for extended resources), and each pod
asks for one slot (spec.resources.limits). With ``gang: native`` (Kubernetes' PodGroup,
scheduling.k8s.io/v1alpha2, the GangScheduling plugin) none of the gang binds and the job's
status says why; with ``gang: none`` (today's behaviour) 3 bind and hold their slots while the
fourth waits. Shown side by side, then both jobs are cancelled: nothing of them needs to run.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import eventually
from kube_node import NODE_NAME, Cluster

from .conftest import get_json, razorctl

SLOT = "example.com/slot"


def set_slots(kube: Cluster, count: int | None) -> None:
    """Advertise ``count`` slots on the node (None: none), as a device admin would."""
    path = "/status/capacity/" + SLOT.replace("/", "~1")
    op = {"op": "add", "path": path, "value": str(count)} if count is not None else {"op": "remove", "path": path}
    kube.kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=json", "-p", json.dumps([op]),
                 check=count is not None)


def job(name: str, gang: str) -> dict:
    """4 nodes, one slot each; the trainer's small config (its ranks only wait for their peers)."""
    return {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": name},
            "spec": {"config": "trainer/configs/digits_mlp.yaml", "nnodes": 4, "gpusPerNode": 0, "gang": gang,
                     "resources": {"limits": {SLOT: "1"}}, "terminationGracePeriodSeconds": 15}}


def bound(kube: Cluster, ns: str, name: str) -> list[str | None]:
    items = (get_json(kube, "pods", "-n", ns, "-l", f"razor.dev/job-name={name}") or {}).get("items") or []
    return [p["spec"].get("nodeName") for p in sorted(items, key=lambda p: p["metadata"]["name"])]


def status(kube: Cluster, ns: str, name: str) -> dict:
    return (get_json(kube, "razorjob", name, "-n", ns) or {}).get("status") or {}


@pytest.fixture
def three_slots(kube: Cluster):
    set_slots(kube, 3)
    eventually(lambda: (get_json(kube, "node", NODE_NAME) or {}).get("status", {}).get("allocatable", {})
               .get(SLOT) == "3", 60, "the node's 3 slots in its allocatable")
    yield
    set_slots(kube, None)


def test_a_gang_that_does_not_fit_binds_no_pod_while_without_a_gang_3_of_4_bind(razor, kube: Cluster,
                                                                                 namespace: str, three_slots):
    ns = namespace
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(job("gang", "native")))
    group = eventually(lambda: get_json(kube, "podgroups.scheduling.k8s.io", "gang", "-n", ns), 60,
                       "the job's PodGroup")
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 4}}
    # The scheduler tried the gang and found it does not fit: the status says so, nothing bound.
    gang_status = eventually(lambda: (lambda s: s if s.get("message", "").startswith("waiting for the gang")
                                      else None)(status(kube, ns, "gang")), 120, "the gang's reason in its status")
    assert bound(kube, ns, "gang") == [None] * 4, bound(kube, ns, "gang")
    assert gang_status["phase"] == "Pending"
    assert "0 of 4 pods scheduled (gang native, all 4 or none" in gang_status["message"], gang_status

    # Side by side, the same job without a gang: 3 pods bind and hold their slots, 1 waits.
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(job("plain", "none")))
    eventually(lambda: sorted(bound(kube, ns, "plain"), key=lambda n: n is None) == [NODE_NAME] * 3 + [None], 120,
               "3 of 4 plain pods bound")
    plain_status = eventually(lambda: (lambda s: s if s.get("message", "").startswith("waiting for the scheduler")
                                       else None)(status(kube, ns, "plain")), 120, "the plain job's reason")
    assert "3 of 4 pods scheduled, 1 unschedulable" in plain_status["message"], plain_status
    assert SLOT in plain_status["message"], plain_status
    assert bound(kube, ns, "gang") == [None] * 4  # still none of the gang
    out = razorctl(kube, "status", "gang", "-n", ns)
    assert "waiting for the gang" in out.stdout, out.stdout + out.stderr
    print(f"\ngang native: {gang_status['message']}\ngang none:   {plain_status['message']}")

    for name in ("gang", "plain"):
        assert razorctl(kube, "cancel", name, "-n", ns).returncode == 0
    eventually(lambda: (get_json(kube, "pods", "-n", ns) or {}).get("items") == [], 120, "the pods to go")
    eventually(lambda: get_json(kube, "podgroups.scheduling.k8s.io", "gang", "-n", ns) is None, 120,
               "the PodGroup to be collected with its job")
