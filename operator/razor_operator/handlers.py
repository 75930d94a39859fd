"""The kopf handlers: read a RazorJob and its pods, ask ``reconcile.decide``, apply the answer.

Level-triggered: every event of a RazorJob or of one of its pods reconciles that job from what
exists now, so a restarted operator, a missed event or a handler run twice converge on the same
state. One reconcile of a job runs at a time, and the events that arrive meanwhile collapse into
one more pass; pods are created concurrently.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException

from razor import kube
from razor.crd import PLURAL
from razor.spec import GROUP, VERSION, SpecError, parse_job, with_cluster_defaults

from . import metrics
from .memory import Trimmer
from .ports import PortIndex
from .reconcile import FAILED, FINISHED, Decision, PodState, decide, job_event_matters, pod_event_matters

log = logging.getLogger("razor.operator")
RETRIES = 5
#: After RETRIES failed reconciles in a row, the job is tried again this much later (the API
#: server may be down; no watch event may come to try it again).
RETRY_LATER = 30.0


class World:
    """The operator's connection to the API server and its in-memory indexes."""

    def __init__(self, api_client: client.ApiClient, ports: PortIndex, workers: int = 32,
                 defaults: dict[str, Any] | None = None):
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.defaults = defaults or {}  # the cluster's values for spec fields a job leaves out
        self.ports = ports
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="razor-create")
        self.trimmer = Trimmer()
        # Due time of each job's next timed reconcile, with the kopf context to run it in (kopf's
        # event posting needs its context variables, which a plain thread does not have).
        self._due: dict[tuple[str, str], tuple[float, contextvars.Context]] = {}
        self._clock = threading.Condition()
        self._clock_thread: threading.Thread | None = None
        # Per job: is a reconcile running, and did something change since it started?
        self._busy: dict[tuple[str, str], bool] = {}
        self._guard = threading.Lock()

    def later(self, namespace: str, name: str, seconds: float) -> None:
        """Reconcile again after ``seconds`` (a TTL or a deadline falls due then): one clock
        thread for all jobs, the earliest due time of each job kept."""
        due = time.monotonic() + max(seconds, 0.0) + 0.2
        with self._clock:
            key = (namespace, name)
            if key not in self._due or due < self._due[key][0]:
                self._due[key] = (due, contextvars.copy_context())
                self._clock.notify()
            if self._clock_thread is None:
                self._clock_thread = threading.Thread(target=self._tick, name="razor-clock", daemon=True)
                self._clock_thread.start()

    def _tick(self) -> None:
        while True:
            with self._clock:
                while True:
                    now = time.monotonic()
                    ready = [(k, ctx) for k, (t, ctx) in self._due.items() if t <= now]
                    if ready:
                        for k, _ in ready:
                            del self._due[k]
                        break
                    self._clock.wait(min(t for t, _ in self._due.values()) - now if self._due else None)
            for (namespace, name), ctx in ready:
                try:
                    ctx.run(self.request, namespace, name)
                except Exception as exc:  # request() retries API errors itself; this is a bug
                    log.warning("timed reconcile of %s/%s failed: %s", namespace, name, exc)

    def request(self, namespace: str, name: str) -> None:
        """Reconcile a job now, or, if a reconcile of it is running, once more right after it.

        A 256-node job's pods raise hundreds of events at once; they collapse into the running
        reconcile plus one more, instead of each reading the job and its pods again (and holding
        a handler thread while it waits its turn).
        """
        key = (namespace, name)
        with self._guard:
            if key in self._busy:
                self._busy[key] = True  # dirty: the running reconcile goes round once more
                return
            self._busy[key] = False
        failures = 0
        try:
            while True:
                try:
                    decision = reconcile(self, namespace, name)
                    self.trimmer.touch()
                    failures = 0
                    if decision is not None and decision.requeue_after is not None:
                        self.later(namespace, name, decision.requeue_after)
                except Exception as exc:  # an API error: try again, a few times, then later
                    failures += 1
                    if failures >= RETRIES:
                        log.error("reconcile of %s/%s failed %d times (%s); trying again in %.0fs",
                                  namespace, name, failures, exc, RETRY_LATER)
                        self.later(namespace, name, RETRY_LATER)
                        return
                    log.warning("reconcile of %s/%s failed (%s); retrying", namespace, name, exc)
                    time.sleep(min(0.25 * 2 ** failures, 5.0))
                    continue
                with self._guard:
                    if not self._busy[key]:
                        return
                    self._busy[key] = False
        finally:
            with self._guard:
                self._busy.pop(key, None)

    # -- reads (raw JSON: cheaper than the client's models for many pods)
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        resp = self.core.list_namespaced_pod(namespace, label_selector=f"{kube.LABEL_JOB}={job}",
                                             _preload_content=False)
        return json.loads(resp.data)["items"]

    def service_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_service(name, namespace, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # -- writes; each tolerates having been done already
    def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
        try:
            self.core.create_namespaced_pod(namespace, body, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def create_service(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_service(namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def delete_pod(self, namespace: str, name: str, grace: int) -> None:
        """Delete a pod with its job's grace (spec.terminationGracePeriodSeconds), within which
        razor.node saves a checkpoint and stops."""
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace,
                                            _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def force_delete_pod(self, namespace: str, name: str, uid: str = "") -> None:
        """Delete a pod at once (grace 0), without its kubelet's confirmation: only for a pod
        whose node is lost. The uid, when given, is a precondition: never a newer pod of that
        name. Gone already, or replaced (404, 409): nothing to do."""
        body = client.V1DeleteOptions(grace_period_seconds=0,
                                      preconditions=client.V1Preconditions(uid=uid) if uid else None)
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body, grace_period_seconds=0,
                                            _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                        propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def _owned(pod: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or [])


def reconcile(world: World, namespace: str, name: str) -> Decision | None:
    """Bring one job's pods and status in line with its spec; returns what was decided."""
    started = time.monotonic()
    body = world.get_job(namespace, name)
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
        if status.get("phase") != FAILED:
            world.patch_status(namespace, name, {"phase": FAILED, "message": str(exc)})
            kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc)[:1000])
        return None
    pods = [p for p in world.list_pods(namespace, name) if _owned(p, uid)]
    states = [s for s in map(PodState.from_pod, pods) if s is not None]
    finished = status.get("phase") in FINISHED
    port = None
    if job.spec.host_network and not finished:
        port = world.ports.allocate(namespace, name, status.get("port"))
    live = not job.spec.suspend and not finished
    decision = decide(job, status, states, datetime.now(timezone.utc),
                      service_exists=not live or world.service_exists(namespace, name))
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
        world.force_delete_pod(namespace, pod, pod_uid)
    for pod in d.delete_pods:
        world.delete_pod(namespace, pod, job.spec.termination_grace_period_seconds)
    if d.create_service:
        world.create_service(namespace, kube.service(job, namespace, uid, port))
    if d.create_ranks:
        attempt = int(d.status.get("attempt", 1))
        bodies = [kube.pod(job, r, namespace, uid, attempt, port) for r in d.create_ranks]
        created = list(world.pool.map(lambda b: world.create_pod(namespace, b), bodies))
        metrics.PODS_CREATED.inc(sum(created))
    if d.status != (body.get("status") or {}):
        status = {k: v for k, v in d.status.items()}
        status["observedGeneration"] = body["metadata"].get("generation")
        world.patch_status(namespace, name, status)
    for kind, reason, message in d.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    if d.delete_job:
        world.delete_job(namespace, name)


def register(world: World) -> None:
    """Register the handlers with kopf (called once by main).

    No kopf timer: a TTL or a deadline is kept by ``World.later`` (scheduled by each reconcile,
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

