"""Progress reports from the training pods: ``POST /progress`` (served by ``server.py``).

Node 0's razor.node POSTs its job's progress (``{"progress": <razor.progress to_status()>}``)
with the pod's projected ServiceAccount token (audience ``razor-operator``, razor.kube) as a
bearer token. The pod has no RBAC at all, and needs none: the operator

1. authenticates the token with a TokenReview (audience razor-operator): a token of another
   audience, an expired one, or one whose pod is gone is refused (401);
2. takes the pod from the review (a token the kubelet projects is bound to its pod: the
   ``authentication.kubernetes.io/pod-name`` and ``pod-uid`` extras; the namespace from the
   username ``system:serviceaccount:<ns>:<sa>``), reads that pod and checks that it is a rank of
   a RazorJob: its uid, its labels, its name ``<job>-<rank>``, its controller ownerReference to
   the job, whose uid matches (403 otherwise: a token of any other pod, or of no pod);
3. validates the body (size, known fields, numbers; 400 or 413) and merge-patches the job's
   ``status.progress`` (the status subresource), stamped with the pod's attempt, unless the
   report is old news: the job has finished, a newer attempt runs, or a later report of the
   same attempt is already there (200, ``ignored``).

So a pod can report the progress of its own job and of no other, with a token that the API
server itself does not accept. The reconcile never writes ``status.progress`` (handlers.py), so
the two never undo each other's patches. What is decided here is pure (:func:`caller`,
:func:`rank_of`, :func:`parse_body`, :func:`progress_patch`); :class:`Receiver` does the I/O.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.client.rest import ApiException

from razor import kube
from razor.policy import FINISHED
from razor.progress import parse_rfc3339, rfc3339
from razor.spec import API_VERSION, KIND

log = logging.getLogger("razor.operator.progress")

AUDIENCE = kube.PROGRESS_AUDIENCE
#: A report is a few hundred bytes; more is not one.
MAX_BODY = 16 * 1024
MAX_METRICS = 32
MAX_NAME = 64
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"
#: A verified token is trusted this long without another TokenReview (one report every 10 s
#: would otherwise cost a TokenReview and a pod read each).
TRUST_SECONDS = 60.0


class Refused(Exception):
    """A report the operator does not take: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    """Who sent a report, as the TokenReview says: a pod, by its ServiceAccount token."""

    namespace: str
    service_account: str
    pod: str
    pod_uid: str


@dataclass(frozen=True)
class Rank:
    """A verified reporter: rank ``rank`` of attempt ``attempt`` of the RazorJob ``job``."""

    namespace: str
    job: str
    job_uid: str
    rank: int
    attempt: int
    pod: str


def bearer(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "an Authorization: Bearer <the pod's razor-operator token> header is needed")
    return token.strip()


def _one(extra: dict[str, Any], key: str) -> str | None:
    values = extra.get(key) or []
    return values[0] if isinstance(values, list) and len(values) == 1 and values[0] else None


def caller(review: dict[str, Any]) -> Caller:
    """The pod a TokenReview's status names; 401 when the token did not authenticate for the
    razor-operator audience, 403 when it is no pod's ServiceAccount token."""
    if not review.get("authenticated"):
        raise Refused(401, f"the token is not valid for the audience {AUDIENCE}"
                           + (f": {review['error']}" if review.get("error") else ""))
    if AUDIENCE not in (review.get("audiences") or []):
        raise Refused(401, f"the token is not meant for the audience {AUDIENCE}")
    user = review.get("user") or {}
    name = user.get("username") or ""
    parts = name.removeprefix(SA_PREFIX).split(":")
    pod, uid = _one(user.get("extra") or {}, POD_NAME), _one(user.get("extra") or {}, POD_UID)
    if not name.startswith(SA_PREFIX) or len(parts) != 2 or not pod or not uid:
        raise Refused(403, f"{name or 'the caller'} is not a pod: only a RazorJob's pods report progress")
    return Caller(parts[0], parts[1], pod, uid)


def rank_of(pod: dict[str, Any] | None, who: Caller) -> tuple[str, str, int, int]:
    """(job, job uid, rank, attempt) of the pod ``who`` names, read from the API; 403 when it
    is not that pod (another uid: a newer pod of the same name) or no rank of a RazorJob."""
    denied = f"pod {who.namespace}/{who.pod} is no rank of a RazorJob"
    if pod is None:
        raise Refused(403, f"pod {who.namespace}/{who.pod} does not exist")
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if meta.get("uid") != who.pod_uid:
        raise Refused(403, f"pod {who.namespace}/{who.pod} is not the pod the token was made for")
    if (spec.get("serviceAccountName") or "default") != who.service_account:
        raise Refused(403, f"pod {who.namespace}/{who.pod} does not run as {who.service_account}")
    labels = meta.get("labels") or {}
    owner = next((ref for ref in meta.get("ownerReferences") or []
                  if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION),
                 None)
    try:
        job, rank, attempt = labels[kube.LABEL_JOB], int(labels[kube.LABEL_RANK]), int(labels[kube.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        raise Refused(403, denied) from None
    if owner is None or owner.get("name") != job or meta.get("name") != f"{job}-{rank}":
        raise Refused(403, denied)
    return job, owner["uid"], rank, attempt


def _refuse(field: str, why: str) -> Refused:
    return Refused(400, f"progress.{field}: {why}")


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _count(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise _refuse(field, f"must be a whole number >= 0, not {json.dumps(value)}")
    return int(value)


def _number(field: str, value: Any, top: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _refuse(field, f"must be a number >= 0, not {json.dumps(value)}")
    if top is not None and value > top:
        raise _refuse(field, f"must be at most {top:g}, not {value:g}")
    return value


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not value.isprintable():
        raise _refuse(field, f"must be a printable string of 1 to {MAX_NAME} characters")
    return value


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _refuse("metrics", "must be a mapping of names to numbers")
    if len(value) > MAX_METRICS:
        raise _refuse("metrics", f"at most {MAX_METRICS} metrics, not {len(value)}")
    out = {}
    for key, number in value.items():
        _name(f"metrics key {key!r}", key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise _refuse(f"metrics.{key}", f"must be a number, not {json.dumps(number)}")
        out[key] = number
    return out


def _time(value: Any) -> str:
    try:
        return rfc3339(parse_rfc3339(value))
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise _refuse("lastUpdateTime", f"must be an RFC 3339 time such as 2026-12-01T06:00:00Z, "
                                        f"not {json.dumps(value)}") from None


#: The fields of a report (razor.progress.Progress.to_status) and how each is checked.
FIELDS = {
    "stage": _name,
    "epoch": _count, "epochs": _count, "step": _count, "steps": _count,
    "percent": lambda f, v: _number(f, v, 100.0),
    "etaSeconds": _number, "samplesPerSecond": _number,
    "metrics": lambda f, v: _metrics(v),
    "lastUpdateTime": lambda f, v: _time(v),
}


def parse_body(raw: bytes, now: float | None = None) -> dict[str, Any]:
    """The ``status.progress`` a request body ``{"progress": {...}}`` reports; 413 when it is
    too big, 400 naming the field when it is not a report (no NaN, no unknown field: the status
    keeps what the CRD's schema describes). A report without a time gets ``now``."""
    if len(raw) > MAX_BODY:
        raise Refused(413, f"a progress report has at most {MAX_BODY} bytes, not {len(raw)}")
    try:
        doc = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"progress"} or not isinstance(doc["progress"], dict):
        raise Refused(400, 'the body must be {"progress": {...}} (razor.progress.Progress.to_status())')
    unknown = sorted(set(doc["progress"]) - set(FIELDS))
    if unknown:
        raise _refuse(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    out = {key: FIELDS[key](key, value) for key, value in doc["progress"].items() if value is not None}
    out.setdefault("lastUpdateTime", rfc3339(time.time() if now is None else now))
    return out


def progress_patch(job: dict[str, Any], rank: Rank, progress: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The status patch that stores a report, or None and why it is ignored: the job is not the
    one the pod belongs to (a new job of the same name), it has finished, a newer attempt runs,
    or the status has a later report of the same attempt already."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    if meta.get("uid") != rank.job_uid:
        return None, f"the pod belongs to an earlier RazorJob {rank.namespace}/{rank.job}"
    if status.get("phase") in FINISHED:
        return None, f"RazorJob {rank.namespace}/{rank.job} has {str(status['phase']).lower()}"
    attempt = int(status.get("attempt") or 1)
    if rank.attempt < attempt:
        return None, f"attempt {rank.attempt} reported, attempt {attempt} runs"
    old = status.get("progress") or {}
    if old.get("attempt") == rank.attempt and old.get("lastUpdateTime"):
        try:
            if parse_rfc3339(old["lastUpdateTime"]) > parse_rfc3339(progress["lastUpdateTime"]):
                return None, "a later report is stored already"
        except ValueError:
            pass  # a garbled stored time: the new report replaces it
    # A merge patch: every field of the old report that this one lacks goes (as null).
    new = {**progress, "attempt": rank.attempt}
    patch = {**{key: None for key in old if key not in new}, **new}
    if isinstance(old.get("metrics"), dict) and "metrics" in new:
        patch["metrics"] = {**{k: None for k in old["metrics"] if k not in new["metrics"]}, **new["metrics"]}
    return {"progress": patch}, "stored"


class ProgressApi(Protocol):
    """What :class:`Receiver` needs of the API server (world.Api has it)."""

    def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]: ...
    def find_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...


class Receiver:
    """``POST /progress``: authenticate, find the rank, store the report. A verified token is
    remembered for TRUST_SECONDS (by its hash), so a job's reports cost a job read and a patch."""

    def __init__(self, api: ProgressApi, trust_seconds: float = TRUST_SECONDS, clock=time.monotonic):
        self.api = api
        self.trust_seconds = trust_seconds
        self.clock = clock
        self._trusted: dict[str, tuple[float, Rank]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Rank:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            hit = self._trusted.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        who = caller(self.api.token_review(token, [AUDIENCE]))
        job, job_uid, rank, attempt = rank_of(self.api.find_pod(who.namespace, who.pod), who)
        found = Rank(who.namespace, job, job_uid, rank, attempt, who.pod)
        with self._lock:
            self._trusted = {k: v for k, v in self._trusted.items() if v[0] > now}
            self._trusted[key] = (now + self.trust_seconds, found)
        return found

    def receive(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one request."""
        try:
            rank = self.verify(bearer(authorization))
            progress = parse_body(body)
            job = self.api.get_job(rank.namespace, rank.job)
            if job is None:
                return 200, {"status": "ignored", "reason": f"RazorJob {rank.namespace}/{rank.job} is gone"}
            patch, why = progress_patch(job, rank, progress)
            if patch is None:
                return 200, {"status": "ignored", "reason": why}
            self.api.patch_status(rank.namespace, rank.job, patch)
            return 200, {"status": why, "job": f"{rank.namespace}/{rank.job}", "attempt": rank.attempt}
        except Refused as exc:
            log.info("progress report refused (%d): %s", exc.status, exc)
            return exc.status, {"error": str(exc)}
        except ApiException as exc:
            if exc.status == 403:  # a namespace this operator does not watch (no RBAC there)
                return 403, {"error": "not a namespace whose RazorJobs this operator runs"}
            log.warning("progress report not stored: the API server answered %s %s", exc.status, exc.reason)
            return 503, {"error": f"the API server answered {exc.status} {exc.reason}; try again later"}
