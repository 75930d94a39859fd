"""spec.gang against a real kube-apiserver: the job's PodGroup (Kubernetes' own, served by the
API server with scheduling.k8s.io/v1alpha2 on; Volcano's and the coscheduler's through the
stand-in CRDs of gang-crds.yaml) is created before the pods, owned by the job, kept across gang
restarts, and garbage-collected with the job; the pods name it. No scheduler runs here:
tests/node/test_gang.py has kube-scheduler's verdict."""

from __future__ import annotations

import pytest

from conftest import eventually
from k8s.test_operator import (GROUP, PLURAL, VERSION, all_pods, api, create_job, get_job, kubelet,  # noqa: F401
                               operator, phase_is, pods_of, run_all)

pytestmark = pytest.mark.k8s

APIS = {"native": ("scheduling.k8s.io", "v1alpha2"), "volcano": ("scheduling.volcano.sh", "v1beta1"),
        "coscheduling": ("scheduling.x-k8s.io", "v1alpha1")}


def pod_group(api, ns: str, gang: str, name: str) -> dict | None:
    group, version = APIS[gang]
    try:
        return api[1].get_namespaced_custom_object(group, version, ns, "podgroups", name)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise


def linked(pod, gang: str) -> str | None:
    """The PodGroup a pod names, as its gang scheduler reads it."""
    if gang == "native":
        return pod.spec.scheduling_group.pod_group_name if pod.spec.scheduling_group else None
    if gang == "volcano":
        assert pod.spec.scheduler_name == "volcano"
        return (pod.metadata.annotations or {}).get("scheduling.k8s.io/group-name")
    return pod.metadata.labels.get("scheduling.x-k8s.io/pod-group")


@pytest.mark.parametrize("gang", ["native", "volcano", "coscheduling"])
def test_the_gang_gets_its_pod_group_kept_across_restarts_and_collected_with_the_job(api, namespace, operator,
                                                                                      gang):
    job = create_job(api, namespace, "g", nnodes=3, gang=gang, restartBackoffSeconds=0)
    uid = job["metadata"]["uid"]
    group = eventually(lambda: pod_group(api, namespace, gang, "g"), what=f"the {gang} PodGroup")
    minimum = group["spec"]["schedulingPolicy"]["gang"]["minCount"] if gang == "native" else group["spec"]["minMember"]
    assert minimum == 3
    assert group["metadata"]["ownerReferences"] == [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "RazorJob",
                                                     "name": "g", "uid": uid, "controller": True,
                                                     "blockOwnerDeletion": True}]
    assert group["metadata"]["labels"]["razor.dev/job-name"] == "g"
    pods = eventually(all_pods(api, namespace, "g", 3), what="3 pods")
    assert [linked(p, gang) for p in pods] == ["g"] * 3  # the API server kept the link (a gate would drop it)
    created = group["metadata"]["creationTimestamp"], group["metadata"]["uid"]

    # A failed rank: the gang restarts as attempt 2, with the same PodGroup.
    run_all(api, namespace, "g", 3)
    kubelet(api, namespace, "g-1", "Failed", 1)
    pods = eventually(all_pods(api, namespace, "g", 3, attempt=2), timeout=60, what="attempt 2's pods")
    assert [linked(p, gang) for p in pods] == ["g"] * 3
    again = pod_group(api, namespace, gang, "g")
    assert (again["metadata"]["creationTimestamp"], again["metadata"]["uid"]) == created
    assert not (get_job(api, namespace, "g").get("status") or {}).get("message", "").startswith("cannot create")

    # Deleting the job: its garbage collector takes the PodGroup with the pods.
    api[1].delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "g")
    eventually(lambda: pod_group(api, namespace, gang, "g") is None, timeout=60, what="the PodGroup's GC")
    eventually(lambda: pods_of(api, namespace, "g") == [], timeout=60, what="the pods' GC")


def test_without_a_gang_no_pod_group_and_the_status_says_why_a_pod_waits(api, namespace, operator):
    create_job(api, namespace, "plain", nnodes=2)
    pods = eventually(all_pods(api, namespace, "plain", 2), what="2 pods")
    assert all(p.spec.scheduling_group is None for p in pods)
    assert all(pod_group(api, namespace, g, "plain") is None for g in APIS)
    # kube-scheduler's verdict, as it writes it (tests/node has the real one)
    api[0].patch_namespaced_pod_status("plain-1", namespace, {"status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient example.com/slot."}]}})
    eventually(lambda: "1 Insufficient example.com/slot" in
               ((get_job(api, namespace, "plain").get("status") or {}).get("message") or ""),
               what="the scheduler's reason in the status")
    message = get_job(api, namespace, "plain")["status"]["message"]
    assert message.startswith("waiting for the scheduler: 0 of 2 pods scheduled, 1 unschedulable (rank 1"), message
