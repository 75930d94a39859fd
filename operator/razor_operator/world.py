"""The operator's three moving parts, apart: the API reads and writes (:class:`Api`), one clock
for timed reconciles (:class:`Clock`), and the per-job coalescing queue (:class:`Queue`).
:class:`World` holds them with the operator's settings; ``handlers.py`` reconciles through it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from razor import kube
from razor.crd import PLURAL
from razor.spec import GROUP, VERSION

from .memory import Trimmer
from .ports import PortIndex
from .reconcile import Decision

log = logging.getLogger("razor.operator")
RETRIES = 5
#: After RETRIES failed reconciles in a row, the job is tried again this much later (the API
#: server may be down; no watch event may come to try it again).
RETRY_LATER = 30.0

Key = tuple[str, str]  # (namespace, name)


class Api:
    """The API server: raw JSON reads (cheaper than the client's models for many pods), and writes
    that each tolerate having been done already."""

    def __init__(self, api_client: client.ApiClient):
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.auth = client.AuthenticationV1Api(api_client)

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

    def find_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod by name, through ``list`` (the operator's RBAC has no ``get`` of pods)."""
        resp = self.core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}",
                                             _preload_content=False)
        items = json.loads(resp.data)["items"]
        return items[0] if items else None

    def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The status of a TokenReview of ``token`` for ``audiences``: who it is, if anyone."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}}
        resp = self.auth.create_token_review(body, _preload_content=False)
        return json.loads(resp.data).get("status") or {}

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

    def create_pod_group(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create the job's PodGroup (kube.pod_group); one that exists already is fine (409).
        False when the API server serves no such resource (404: the gang scheduler's API is not
        installed, or Kubernetes' own not enabled)."""
        group, version = body["apiVersion"].split("/")
        try:
            self.custom.create_namespaced_custom_object(group, version, namespace, kube.POD_GROUP_PLURAL, body,
                                                        _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status != 409:
                raise
        return True

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


class Clock:
    """Timed reconciles (a TTL, a deadline, a backoff, a force delete falls due): one thread for
    all jobs, the earliest due time of each job kept, each run in the kopf context it was asked
    from (kopf's event posting needs its context variables, which a plain thread does not have)."""

    def __init__(self, fire: Callable[[str, str], None]):
        self._fire = fire
        self._due: dict[Key, tuple[float, contextvars.Context]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def later(self, namespace: str, name: str, seconds: float) -> None:
        """Fire for the job after ``seconds`` (unless an earlier time is already due)."""
        due = time.monotonic() + max(seconds, 0.0) + 0.2
        with self._cond:
            key = (namespace, name)
            if key not in self._due or due < self._due[key][0]:
                self._due[key] = (due, contextvars.copy_context())
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._tick, name="razor-clock", daemon=True)
                self._thread.start()

    def _tick(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    ready = [(k, ctx) for k, (t, ctx) in self._due.items() if t <= now]
                    if ready:
                        for k, _ in ready:
                            del self._due[k]
                        break
                    self._cond.wait(min(t for t, _ in self._due.values()) - now if self._due else None)
            for (namespace, name), ctx in ready:
                try:
                    ctx.run(self._fire, namespace, name)
                except Exception as exc:  # the queue retries API errors itself; this is a bug
                    log.warning("timed reconcile of %s/%s failed: %s", namespace, name, exc)


class Queue:
    """One reconcile of a job at a time; the requests that come meanwhile collapse into one more
    pass. A 256-node job's pods raise hundreds of events at once: they make the running reconcile
    plus one more, instead of each reading the job and its pods again (and holding a handler
    thread while it waits its turn). API errors are retried a few times, then later."""

    def __init__(self, run: Callable[[str, str], Decision | None], clock: Clock,
                 done: Callable[[], None] = lambda: None):
        self._run = run
        self._clock = clock
        self._done = done
        # Per job: is a reconcile running, and did something change since it started?
        self._busy: dict[Key, bool] = {}
        self._guard = threading.Lock()

    def request(self, namespace: str, name: str) -> None:
        """Reconcile a job now, or, if a reconcile of it is running, once more right after it."""
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
                    decision = self._run(namespace, name)
                    self._done()
                    failures = 0
                    if decision is not None and decision.requeue_after is not None:
                        self._clock.later(namespace, name, decision.requeue_after)
                except Exception as exc:  # an API error: try again, a few times, then later
                    failures += 1
                    if failures >= RETRIES:
                        log.error("reconcile of %s/%s failed %d times (%s); trying again in %.0fs",
                                  namespace, name, failures, exc, RETRY_LATER)
                        self._clock.later(namespace, name, RETRY_LATER)
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


class World:
    """What the handlers work with: the API, the clock and the queue, the host-port index, the
    pool that creates pods concurrently, the cluster's defaults for spec fields a job leaves
    out, and where the pods report progress (--progress-url; None: they do not). ``reconcile``
    is the function the queue runs for a job (handlers.reconcile)."""

    def __init__(self, api_client: client.ApiClient, ports: PortIndex, workers: int = 32,
                 defaults: dict[str, Any] | None = None,
                 reconcile: Callable[[World, str, str], Decision | None] | None = None,
                 progress_url: str | None = None):
        self.api = Api(api_client)
        self.defaults = defaults or {}
        self.progress_url = progress_url
        self.ports = ports
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="razor-create")
        self.trimmer = Trimmer()
        self.clock = Clock(self.request)
        run = (lambda ns, name: reconcile(self, ns, name)) if reconcile else (lambda ns, name: None)
        self.queue = Queue(run, self.clock, done=self.trimmer.touch)

    def request(self, namespace: str, name: str) -> None:
        self.queue.request(namespace, name)

    def later(self, namespace: str, name: str, seconds: float) -> None:
        self.clock.later(namespace, name, seconds)
