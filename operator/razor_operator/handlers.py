"""The kopf handlers: read a RazorJob and its pods, ask ``reconcile.decide``, apply the answer
(through ``world.World``: the API, the clock, the coalescing queue).

Level-triggered: every event of a RazorJob or of one of its pods reconciles that job from what
exists now, so a restarted operator, a missed event or a handler run twice converge on the same
state. One reconcile of a job runs at a time, and the events that arrive meanwhile collapse into
one more pass; pods are created concurrently.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import kopf

from razor import kube
from razor.crd import PLURAL
from razor.spec import GROUP, VERSION, SpecError, parse_job, with_cluster_defaults

from . import metrics
from .reconcile import FINISHED, Decision, Phase, PodState, decide, job_event_matters, pod_event_matters
from .world import World

#: Status fields that others write (the pods' progress reports): never in a reconcile's patch.
REPORTED = frozenset({"progress"})
#: Seconds before a job whose PodGroup could not be created (its API not served) tries again.
POD_GROUP_RETRY = 30.0


def _owned(pod: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or [])


def reconcile(world: World, namespace: str, name: str) -> Decision | None:
    """Bring one job's pods and status in line with its spec; returns what was decided."""
    started = time.monotonic()
    body = world.api.get_job(namespace, name)
    if body is None:
        return None
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return None
    uid = meta["uid"]
    status = body.get("status") or {}
    try:
        doc = with_cluster_defaults({k: v for k, v in body.items() if k != "status"}, world.defaults)
        job = parse_job(doc, f"RazorJob {namespace}/{name}")
    except SpecError as exc:  # the CRD's schema should have refused it; say so, once
        if status.get("phase") != Phase.FAILED:
            world.api.patch_status(namespace, name, {"phase": Phase.FAILED.value, "message": str(exc)})
            kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc)[:1000])
        return None
    pods = [p for p in world.api.list_pods(namespace, name) if _owned(p, uid)]
    states = [s for s in map(PodState.from_pod, pods) if s is not None]
    finished = status.get("phase") in FINISHED
    port = None
    if job.spec.host_network and not finished:
        port = world.ports.allocate(namespace, name, status.get("port"))
    live = not job.spec.suspend and not finished
    decision = decide(job, status, states, datetime.now(timezone.utc),
                      service_exists=not live or world.api.service_exists(namespace, name))
    if port is not None:
        decision.status["port"] = port
    _apply(world, body, job, namespace, uid, decision, port)
    if decision.status.get("phase") in FINISHED and job.spec.host_network:
        world.ports.release(namespace, name)
    metrics.observe(namespace, name, decision.status.get("phase"), time.monotonic() - started)
    return decision


def _apply(world: World, body: dict[str, Any], job, namespace: str, uid: str, d: Decision,
           port: int | None) -> None:
    name = job.name
    for pod, pod_uid in d.force_delete_pods.items():
        world.api.force_delete_pod(namespace, pod, pod_uid)
    for pod in d.delete_pods:
        world.api.delete_pod(namespace, pod, job.spec.termination_grace_period_seconds)
    if d.create_service:
        world.api.create_service(namespace, kube.service(job, namespace, uid, port))
    if d.create_pod_group and not world.api.create_pod_group(namespace, kube.pod_group(job, namespace, uid)):
        # No pod before its PodGroup (a gang pod would wait for it, or be scheduled alone): the
        # job waits, says why, and tries again later (the admin may install or enable the API).
        group, version = kube.POD_GROUP_APIS[job.spec.gang]
        d.create_ranks = []
        d.status["phase"] = Phase.PENDING.value
        d.status["message"] = (f"cannot create the PodGroup for gang {job.spec.gang}: the API server serves no "
                               f"podgroups in {group}/{version} (see docs/kubernetes.md#gang-scheduling); "
                               f"trying again in {POD_GROUP_RETRY:.0f}s")
        d.status["ranksByPhase"] = {"pending": job.spec.nnodes, "running": 0, "succeeded": 0, "failed": 0}
        if int(d.status.get("attempt", 1)) == 1:  # nothing was created: not yet Created
            d.status["conditions"] = [c for c in d.status.get("conditions") or [] if c["type"] != "Created"]
            d.events = [e for e in d.events if e[1] != "Created"]
        d.wake(POD_GROUP_RETRY)
    if d.create_ranks:
        attempt = int(d.status.get("attempt", 1))
        bodies = [kube.pod(job, r, namespace, uid, attempt, port, world.progress_url) for r in d.create_ranks]
        created = list(world.pool.map(lambda b: world.api.create_pod(namespace, b), bodies))
        metrics.PODS_CREATED.inc(sum(created))
    # status.progress is the pods' (progress.py): the reconcile leaves it as it is now, not as read.
    old = {k: v for k, v in (body.get("status") or {}).items() if k not in REPORTED}
    new = {k: v for k, v in d.status.items() if k not in REPORTED}
    if new != old:
        # A merge patch: a field the decision dropped (nextAttemptTime, say) goes as a null.
        status = {**{k: None for k in old if k not in new}, **new}
        status["observedGeneration"] = body["metadata"].get("generation")
        world.api.patch_status(namespace, name, status)
    for kind, reason, message in d.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    if d.delete_job:
        world.api.delete_job(namespace, name)


def register(world: World) -> None:
    """Register the handlers with kopf (called once by main).

    No kopf timer: a TTL, a deadline or a backoff is kept by ``World.later`` (its Clock) (scheduled by each reconcile,
    so again by the first one after a restart), which needs no finalizer on the job: deleting a
    RazorJob never waits for the operator.
    """

    @kopf.on.event(GROUP, VERSION, PLURAL)
    def job_event(event: dict[str, Any], body: dict[str, Any], name: str, namespace: str,
                  **_: Any) -> None:
        if event.get("type") == "DELETED":
            world.ports.release(namespace, name)
            metrics.forget(namespace, name)
            return
        if job_event_matters(event.get("type"), body):
            world.request(namespace, name)

    @kopf.on.event("v1", "pods", labels={kube.LABEL_JOB: kopf.PRESENT})
    def pod_event(event: dict[str, Any], body: dict[str, Any], labels: dict[str, str],
                  namespace: str, **_: Any) -> None:
        if pod_event_matters(event.get("type"), body):
            world.request(namespace, labels[kube.LABEL_JOB])

