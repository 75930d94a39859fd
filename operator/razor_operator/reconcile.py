"""What the operator should do for one RazorJob, given what exists: a pure function.

``decide(job, status, pods, ...)`` looks at the job's status and its pods (as a kubelet left
them) and returns a :class:`Decision`: pods to create or delete, the new status, events, and
whether the job itself should go (TTL). The kopf handlers in ``handlers.py`` only read the
world, call this, and apply the result, so every rule here is tested without a cluster.

The gang: all ranks of an attempt run together; when one fails, every pod of the attempt is
deleted, and only when all are gone is the next attempt created (the names are the same), with
RAZOR_ATTEMPT + 1, up to ``backoffLimit`` restarts. Exit codes in ``permanentExitCodes`` fail
the job at once.

Lost nodes: a rank whose pod Kubernetes deletes while the gang runs (the taint manager evicting
the pods of a node that stopped answering, a preemption, a drain, a ``kubectl delete``), or
whose pod is gone, is a gang failure like a failed rank. A pod whose deletion no kubelet confirms
``nodeLostTimeoutSeconds`` after its grace period ended (its deletionTimestamp) is force-deleted
(grace 0): its node is lost, and the next attempt, whose pods have the same names, could never
start otherwise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from razor.kube import LABEL_ATTEMPT, LABEL_RANK, pod_name
from razor.launcher import EXIT_PREEMPTED
from razor.spec import RazorJob

PENDING, RUNNING, RESTARTING = "Pending", "Running", "Restarting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
FINISHED = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class PodState:
    name: str
    rank: int
    attempt: int
    phase: str                  # Pending, Running, Succeeded, Failed, Unknown
    exit_code: int | None = None
    reason: str | None = None
    deleting: bool = False
    node: str | None = None                     # spec.nodeName: where it was bound
    uid: str | None = None
    deletion_timestamp: datetime | None = None  # when its grace period ends (or ended)
    deletion_grace: int | None = None           # metadata.deletionGracePeriodSeconds
    disruption: str | None = None               # the reason of its DisruptionTarget condition
    #: Since when its node stopped reporting: the node controller set the pod's Ready condition
    #: False while the kubelet's last container statuses still say ready (a kubelet never does).
    unreachable_since: datetime | None = None

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> "PodState | None":
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            rank, attempt = int(labels[LABEL_RANK]), int(labels[LABEL_ATTEMPT])
        except (KeyError, ValueError):
            return None
        status = pod.get("status") or {}
        code = reason = None
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                code, reason = term.get("exitCode"), term.get("reason")
                if code:
                    break
        disruption = next((c.get("reason") or "Unknown" for c in status.get("conditions") or []
                           if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        grace = meta.get("deletionGracePeriodSeconds")
        unreachable_since = None
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        containers = status.get("containerStatuses") or []
        if (status.get("phase") == RUNNING and ready is not None and ready.get("status") == "False"
                and containers and all(cs.get("ready") for cs in containers)):
            unreachable_since = _parse_ts(ready.get("lastTransitionTime"))
        return cls(meta.get("name", ""), rank, attempt, status.get("phase") or "Pending", code,
                   reason or status.get("reason"), bool(meta.get("deletionTimestamp")),
                   (pod.get("spec") or {}).get("nodeName"), meta.get("uid"),
                   _parse_ts(meta.get("deletionTimestamp")), None if grace is None else int(grace),
                   disruption, unreachable_since)


@dataclass
class Decision:
    create_service: bool = False
    create_ranks: list[int] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    #: Pods to delete with grace 0 (name: uid, a precondition): their deletion was never confirmed.
    force_delete_pods: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    delete_job: bool = False
    requeue_after: float | None = None


def _ts(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:  # RFC 3339 with fractions or an offset
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def set_condition(status: dict[str, Any], kind: str, true: bool, reason: str, message: str,
                  now: datetime) -> None:
    """Set one condition; its lastTransitionTime moves only when its status changes."""
    conditions = status.setdefault("conditions", [])
    value = "True" if true else "False"
    for cond in conditions:
        if cond["type"] == kind:
            if cond["status"] != value:
                cond["lastTransitionTime"] = _ts(now)
            cond.update(status=value, reason=reason, message=message)
            return
    if true:  # a condition appears when it first becomes true
        conditions.append({"type": kind, "status": value, "reason": reason, "message": message,
                           "lastTransitionTime": _ts(now)})


def _describe(p: PodState) -> str:
    why = f" ({p.reason})" if p.reason else ""
    return f"rank {p.rank} (pod {p.name}) exited with code {p.exit_code}{why}"


#: The reasons of the DisruptionTarget condition Kubernetes sets on a pod before deleting it:
#: the status condition's reason for the gang's restart, and what happened.
DISRUPTIONS = {
    "DeletionByTaintManager": ("NodeLost", "evicted by the taint manager (its node is not ready or "
                                           "unreachable, or has another NoExecute taint)"),
    "DeletionByPodGC": ("NodeLost", "deleted by the pod garbage collector (its node is gone or out "
                                    "of service)"),
    "PreemptionByScheduler": ("Preempted", "preempted by the scheduler for a pod of higher priority"),
    "EvictionByEvictionAPI": ("Evicted", "evicted through the Eviction API (a node drain, say)"),
    "TerminationByKubelet": ("Evicted", "terminated by its kubelet (node pressure or shutdown)"),
}


def _lost(rank: int, pod: str, node: str | None, reason: str, what: str) -> tuple[int, str, str]:
    where = f" with node {node}" if node else ""
    return rank, reason, f"rank {rank} (pod {pod}) lost{where}: {what}"


def _lost_pod(p: PodState) -> tuple[int, str, str]:
    reason, what = DISRUPTIONS.get(p.disruption or "", ("PodDeleted", "deleted while the gang ran"))
    return _lost(p.rank, p.name, p.node, reason, what)


def _gang_failure(job: RazorJob, d: Decision, st: dict[str, Any], attempt: int, what: str,
                  reason: str, current: list[PodState], now: datetime) -> Decision:
    """Restart every rank as the next attempt, or fail the job once backoffLimit is reached."""
    spec = job.spec
    if st["restarts"] >= spec.backoff_limit:
        msg = f"{what}; backoffLimit {spec.backoff_limit} reached after {st['restarts']} restart(s)"
        return _finish(job, d, st, FAILED, "BackoffLimitExceeded", msg, now, current)
    st["restarts"] += 1
    st["attempt"] = attempt + 1
    st["phase"] = RESTARTING
    st["message"] = (f"{what}; restarting all {spec.nnodes} rank(s) as attempt {attempt + 1} "
                     f"(restart {st['restarts']} of {spec.backoff_limit})")
    set_condition(st, RESTARTING, True, reason, st["message"], now)
    set_condition(st, RUNNING, False, reason, st["message"], now)
    d.events.append(("Warning", "Restarting", st["message"]))
    d.delete_pods += [p.name for p in current if not p.deleting]
    return d


def _force_unconfirmed_deletions(job: RazorJob, d: Decision, pods: list[PodState], now: datetime) -> None:
    """Force-delete (grace 0) the pods whose deletion no kubelet confirmed nodeLostTimeoutSeconds
    after their grace period ended; come back when the next one falls due."""
    bound = job.spec.node_lost_timeout_seconds
    notes = []
    for p in sorted(pods, key=lambda p: (p.attempt, p.rank)):
        if p.deletion_timestamp is None or p.deletion_grace == 0:
            continue  # not being deleted, or already forced (a finalizer holds it: not ours)
        left = (p.deletion_timestamp + timedelta(seconds=bound) - now).total_seconds()
        if left > 0:
            d.requeue_after = left if d.requeue_after is None else min(d.requeue_after, left)
            continue
        d.force_delete_pods[p.name] = p.uid or ""
        where = f" lost with node {p.node}" if p.node else ""
        note = (f"rank {p.rank} (pod {p.name}){where}: not confirmed deleted {bound}s after its "
                f"grace period; force-deleted")
        d.events.append(("Warning", "ForceDeleted", note))
        notes.append(note)
    st = d.status
    if notes and st.get("phase") not in (*FINISHED, SUSPENDED):
        then = (f"; restarting all {job.spec.nnodes} rank(s) as attempt {st['attempt']}"
                if st.get("phase") == RESTARTING else "")
        st["message"] = "; ".join(notes) + then


def _finish(job: RazorJob, d: Decision, st: dict[str, Any], phase: str, reason: str, message: str,
            now: datetime, live: list[PodState]) -> Decision:
    st["phase"] = phase
    st["message"] = message
    st["completionTime"] = _ts(now)
    for kind in (RUNNING, RESTARTING):
        set_condition(st, kind, False, reason, message, now)
    set_condition(st, phase, True, reason, message, now)
    d.events.append(("Normal" if phase == SUCCEEDED else "Warning", reason, message))
    if phase == FAILED:  # nothing of a failed job keeps running
        d.delete_pods += [p.name for p in live if p.phase not in FINISHED and not p.deleting]
    # The TTL's clock starts now (the deadline's, if any, no longer matters).
    d.requeue_after = job.spec.ttl_seconds_after_finished
    return d


def job_event_matters(event_type: str | None, body: dict[str, Any]) -> bool:
    """Whether a RazorJob watch event can change what to do.

    A MODIFIED event whose ``metadata.generation`` the status has already observed changed only
    the status or the metadata, almost always the operator's own status patch: reconciling on it
    would only read again what the operator just wrote. A spec change raises the generation.
    """
    if event_type != "MODIFIED":
        return True  # ADDED, and the initial listing of a (re)started operator (type None)
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is None or observed != (body.get("metadata") or {}).get("generation")


def pod_event_matters(event_type: str | None, body: dict[str, Any]) -> bool:
    """Whether a pod watch event can change what to do for its job.

    A pod ADDED while still Pending is one the operator has just created (and already counted in
    the status): nothing to do until the pod runs, fails, or goes.
    """
    if event_type != "ADDED":
        return True
    phase = (body.get("status") or {}).get("phase") or PENDING
    return phase != PENDING or bool((body.get("metadata") or {}).get("deletionTimestamp"))


def decide(job: RazorJob, status: dict[str, Any] | None, pods: list[PodState], now: datetime,
           service_exists: bool = True) -> Decision:
    d = _decide(job, status, pods, now, service_exists)
    _force_unconfirmed_deletions(job, d, pods, now)
    return d


def _decide(job: RazorJob, status: dict[str, Any] | None, pods: list[PodState], now: datetime,
            service_exists: bool) -> Decision:
    spec = job.spec
    st = copy.deepcopy(status or {})
    st.setdefault("attempt", 1)
    st.setdefault("restarts", 0)
    d = Decision(status=st)
    phase = st.get("phase")
    attempt = int(st["attempt"])
    ranks = range(spec.nnodes)

    # -- finished jobs: only the TTL is left to do
    if phase in FINISHED:
        if phase == FAILED:
            d.delete_pods = [p.name for p in pods if p.phase not in FINISHED and not p.deleting]
        done = _parse_ts(st.get("completionTime"))
        ttl = spec.ttl_seconds_after_finished
        if ttl is not None and done is not None:
            left = (done + timedelta(seconds=ttl) - now).total_seconds()
            if left <= 0:
                d.delete_job = True
                d.events.append(("Normal", "Deleted", f"finished {ttl}s ago (ttlSecondsAfterFinished)"))
            else:
                d.requeue_after = left
        return d

    # -- suspended: no pods, the job stays
    if spec.suspend:
        d.delete_pods = [p.name for p in pods if not p.deleting]
        if phase != SUSPENDED:
            st["phase"] = SUSPENDED
            st["message"] = "suspended: pods deleted; set suspend: false to start again"
            set_condition(st, SUSPENDED, True, "Suspended", st["message"], now)
            set_condition(st, RUNNING, False, "Suspended", st["message"], now)
            d.events.append(("Normal", "Suspended", "job suspended, pods deleted"))
        return d
    if phase == SUSPENDED:
        set_condition(st, SUSPENDED, False, "Resumed", "suspend set to false", now)
        d.events.append(("Normal", "Resumed", "job resumed"))
        st["phase"] = phase = PENDING
        st.pop("startTime", None)  # the deadline counts from the new start

    # -- the deadline
    start = _parse_ts(st.get("startTime"))
    if spec.active_deadline_seconds and start is not None:
        left = (start + timedelta(seconds=spec.active_deadline_seconds) - now).total_seconds()
        if left <= 0:
            msg = f"ran longer than activeDeadlineSeconds ({spec.active_deadline_seconds}s)"
            return _finish(job, d, st, FAILED, "DeadlineExceeded", msg, now, pods)
        d.requeue_after = left

    stale = [p for p in pods if p.attempt != attempt]
    current = {p.rank: p for p in pods if p.attempt == attempt and p.rank in ranks}
    d.delete_pods += [p.name for p in stale if not p.deleting]
    d.delete_pods += [p.name for p in pods if p.attempt == attempt and p.rank not in ranks and not p.deleting]
    st["ranks"] = [
        {k: v for k, v in {"rank": r, "pod": p.name, "phase": p.phase, "exitCode": p.exit_code,
                           "reason": p.reason, "node": p.node}.items() if v is not None}
        for r, p in sorted(current.items())
    ]

    # -- a failed rank: fail the job, or restart the whole gang
    failed = sorted((p for p in current.values() if p.phase == FAILED), key=lambda p: p.rank)
    if failed:
        first = failed[0]
        what = _describe(first)
        if first.exit_code in spec.permanent_exit_codes:
            msg = f"{what}; exit code {first.exit_code} is permanent, not restarted"
            return _finish(job, d, st, FAILED, "PermanentFailure", msg, now, list(current.values()))
        reason = "Preempted" if first.exit_code == EXIT_PREEMPTED else "RankFailed"
        return _gang_failure(job, d, st, attempt, what, reason, list(current.values()), now)

    # -- a lost rank: its pod deleted by Kubernetes (a DisruptionTarget: the taint manager on a
    # lost node, a preemption, a drain) or by anyone while the gang runs, or gone from a running
    # gang. The gang cannot go on without it: restart it (a pod deleting before the gang ran,
    # e.g. one of a suspension just lifted, is only waited for).
    lost = [_lost_pod(p) for p in current.values()
            if p.deleting and p.phase not in FINISHED and (phase == RUNNING or p.disruption)]
    # A node that stopped reporting: Kubernetes evicts its pods (the tolerations above), except
    # when it thinks the control plane itself is cut off (every node of every zone not ready, a
    # one-node cluster's lost node included): then the operator gives up on them itself.
    bound = timedelta(seconds=spec.node_lost_timeout_seconds)
    for p in current.values():
        if p.deleting or p.unreachable_since is None:
            continue
        left = (p.unreachable_since + bound - now).total_seconds()
        if left > 0:
            d.requeue_after = left if d.requeue_after is None else min(d.requeue_after, left)
        else:
            lost.append(_lost(p.rank, p.name, p.node, "NodeLost",
                              f"its node stopped reporting {int((now - p.unreachable_since).total_seconds())}s "
                              f"ago (nodeLostTimeoutSeconds {spec.node_lost_timeout_seconds})"))
    if phase == RUNNING:
        was = [e for e in (status or {}).get("ranks") or [] if e.get("rank") in ranks]
        lost += [_lost(e["rank"], e.get("pod", pod_name(job, e["rank"])), e.get("node"), "PodLost",
                       "gone while the gang ran") for e in was if e["rank"] not in current]
    if lost:
        _, reason, what = min(lost)
        return _gang_failure(job, d, st, attempt, what, reason, list(current.values()), now)

    # -- every rank succeeded
    if len(current) == spec.nnodes and all(p.phase == SUCCEEDED for p in current.values()):
        return _finish(job, d, st, SUCCEEDED, "Completed", f"all {spec.nnodes} rank(s) succeeded", now, [])

    # -- create what is missing, once the previous attempt is gone (the names are the same)
    if not service_exists:
        d.create_service = True
    missing = [r for r in ranks if r not in current]
    if missing and not stale:
        d.create_ranks = missing
        # The status names the pods being created now, so it is true without waiting for their
        # ADDED events (the operator does not reconcile on those: nothing about a new pod changes
        # what to do).
        st["ranks"] = sorted(st["ranks"] + [{"rank": r, "pod": pod_name(job, r), "phase": PENDING}
                                            for r in missing], key=lambda e: e["rank"])
        if attempt == 1 and not any(c["type"] == "Created" for c in st.get("conditions", [])):
            set_condition(st, "Created", True, "PodsCreated", f"service and {spec.nnodes} pod(s) created", now)
            d.events.append(("Normal", "Created", f"created service {job.name} and {len(missing)} pod(s)"))
        elif phase == RESTARTING:
            d.events.append(("Normal", "Created", f"attempt {attempt}: created {len(missing)} pod(s)"))
    if phase == RESTARTING and (stale or missing):
        return d  # still restarting

    running = len(current) == spec.nnodes and all(p.phase in (RUNNING, SUCCEEDED) and not p.deleting
                                                   for p in current.values())
    if running:
        if phase != RUNNING:
            st["phase"] = RUNNING
            st["message"] = f"all {spec.nnodes} rank(s) running (attempt {attempt})"
            st.setdefault("startTime", _ts(now))
            set_condition(st, RUNNING, True, "AllRanksRunning", st["message"], now)
            set_condition(st, RESTARTING, False, "AllRanksRunning", st["message"], now)
            d.events.append(("Normal", "Running", st["message"]))
            if spec.active_deadline_seconds and d.requeue_after is None:
                d.requeue_after = float(spec.active_deadline_seconds)
    elif phase not in (PENDING,):
        waiting = spec.nnodes - sum(p.phase in (RUNNING, SUCCEEDED) and not p.deleting
                                    for p in current.values())
        st["phase"] = PENDING
        st["message"] = f"waiting for {waiting} of {spec.nnodes} rank(s) to run (attempt {attempt})"
    return d

