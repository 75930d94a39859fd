"""What the operator should do for one RazorJob, given what exists: a pure function.

``decide(job, status, pods, ...)`` looks at the job's status and its pods (as a kubelet left
them) and returns a :class:`Decision`: pods to create or delete, the new status, events, and
whether the job itself should go (TTL). The kopf handlers in ``handlers.py`` only read the
world, call this, and apply the result, so every rule here is tested without a cluster.

One function per policy, tried in this order (each either settles the reconcile or lets the
next one look):

- ``_after_finish``: a finished job only waits for its TTL;
- ``_suspension``: a suspended job has no pods (and a resumed one starts again);
- ``_deadline``: ``activeDeadlineSeconds`` fails a job that runs too long;
- ``_failures``: a failed or lost rank fails the gang: ``razor.policy`` decides between failing the
  job and restarting every rank as the next attempt, counted or not, after a backoff or at once;
- ``_success``: every rank succeeded;
- ``_creation``: the Service and the missing pods, once the previous attempt is gone and its
  backoff has passed (the names are the same);
- ``_running``: Running once every rank runs, else Pending.

The gang: all ranks of an attempt run together; when one fails or is lost (its pod deleted by
Kubernetes or anyone, or gone, while the gang runs; its node silent), every pod of the attempt is
deleted, and only when all are gone is the next attempt created, with RAZOR_ATTEMPT + 1. A pod
whose deletion no kubelet confirms ``nodeLostTimeoutSeconds`` after its grace period ended (its
deletionTimestamp) is force-deleted (grace 0): its node is lost, and the next attempt, whose pods
have the same names, could never start otherwise.

The status stays small at any size: counts by phase (``ranksByPhase``), at most ``STATUS_RANKS``
entries in ``ranks`` (the most telling ranks of the attempt: every rank of a small job) and in
``failedRanks`` (the failed or lost ranks of the last attempt that failed).
"""

from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from razor.kube import LABEL_ATTEMPT, LABEL_RANK, pod_name
from razor.policy import (FINISHED, Action, FailureClass, Phase, Policy, RankOutcome, Restarts, Verdict, classify,
                          on_failure)
from razor.spec import RazorJob

__all__ = ["FINISHED", "Phase", "PodState", "Decision", "decide", "job_event_matters", "pod_event_matters"]

#: At most this many entries in status.ranks and status.failedRanks, whatever the job's size.
STATUS_RANKS = 32
#: At most this many characters of a container's termination message go into a rank's outcome
#: (status.message, failedRanks[].message, the Event): a Kubernetes Event keeps 1024 (kopf cuts
#: the middle out of a longer one), and the message around it needs room.
DETAIL_MAX = 600


def bounded(text: str, limit: int = DETAIL_MAX) -> str:
    """A termination message cut to ``limit`` characters the way a traceback reads: its first
    line (razor.node's "rank R exited with code C: <the exception>", or a stall's "no progress
    for N s since ...") and as many of its last lines (the root cause's frames) as fit."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    if len("\n".join(lines)) <= limit:
        return "\n".join(lines)
    head = lines[0] if len(lines[0]) <= limit // 2 else lines[0][:limit // 2 - 3] + "..."
    tail: list[str] = []
    room = limit - len(head) - len("\n...")
    for line in reversed(lines[1:]):
        if len(line) + 1 > room:
            break
        tail.insert(0, line)
        room -= len(line) + 1
    return "\n".join([head, "...", *tail])


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
    #: Why Kubernetes takes it away: its DisruptionTarget condition's reason (or the pod's own
    #: reason, Evicted, Preempting, when a kubelet too old to set the condition evicted it).
    disruption: str | None = None
    #: Since when its node stopped reporting: the node controller set the pod's Ready condition
    #: False while the kubelet's last container statuses still say ready (a kubelet never does).
    unreachable_since: datetime | None = None
    finished_at: datetime | None = None         # its container's terminated finishedAt
    disruption_since: datetime | None = None    # its DisruptionTarget condition's time
    #: Its container's termination message (razor.node's failure message through
    #: /dev/termination-log, else the log's tail: FallbackToLogsOnError), bounded.
    message: str | None = None
    #: Why the scheduler has not placed it yet: its PodScheduled=False condition's message (or
    #: reason): "0/1 nodes are available: 1 Insufficient example.com/slot", a gang that cannot fit.
    unschedulable: str | None = None

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> "PodState | None":
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            rank, attempt = int(labels[LABEL_RANK]), int(labels[LABEL_ATTEMPT])
        except (KeyError, ValueError):
            return None
        status = pod.get("status") or {}
        code = reason = finished = message = None
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                code, reason = term.get("exitCode"), term.get("reason")
                finished = _parse_ts(term.get("finishedAt"))
                # The message of this end, else of the container's previous one (lastState).
                said = term.get("message") or ((cs.get("lastState") or {}).get("terminated") or {}).get("message")
                message = bounded(said) if (said or "").strip() else None
                if code:
                    break
        conditions = status.get("conditions") or []
        target = next((c for c in conditions
                       if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        disruption = (target.get("reason") or "Unknown") if target else None
        if disruption is None and status.get("reason") in POD_REASON_DISRUPTIONS:
            disruption = status.get("reason")
        grace = meta.get("deletionGracePeriodSeconds")
        unreachable_since = None
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        containers = status.get("containerStatuses") or []
        if (status.get("phase") == Phase.RUNNING and ready is not None and ready.get("status") == "False"
                and containers and all(cs.get("ready") for cs in containers)):
            unreachable_since = _parse_ts(ready.get("lastTransitionTime"))
        scheduled = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        unschedulable = None
        if scheduled is not None and scheduled.get("status") == "False":
            unschedulable = " ".join((scheduled.get("message") or scheduled.get("reason") or "unschedulable").split())
        return cls(meta.get("name", ""), rank, attempt, status.get("phase") or Phase.PENDING.value, code,
                   reason or status.get("reason"), bool(meta.get("deletionTimestamp")),
                   (pod.get("spec") or {}).get("nodeName"), meta.get("uid"),
                   _parse_ts(meta.get("deletionTimestamp")), None if grace is None else int(grace),
                   disruption, unreachable_since, finished,
                   _parse_ts(target.get("lastTransitionTime")) if target else None, message,
                   bounded(unschedulable, 300) if unschedulable else None)

    @property
    def done(self) -> bool:
        return self.phase in FINISHED

    @property
    def up(self) -> bool:
        """Running (or done with success) and not going away."""
        return self.phase in (Phase.RUNNING, Phase.SUCCEEDED) and not self.deleting

    @property
    def deletion_requested(self) -> datetime | None:
        """When its deletion was asked for (its grace period ends at deletionTimestamp)."""
        if self.deletion_timestamp is None:
            return None
        return self.deletion_timestamp - timedelta(seconds=self.deletion_grace or 0)


@dataclass
class Decision:
    create_service: bool = False
    #: Create the job's PodGroup (spec.gang) before the pods: one per job, kept across restarts.
    create_pod_group: bool = False
    create_ranks: list[int] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    #: Pods to delete with grace 0 (name: uid, a precondition): their deletion was never confirmed.
    force_delete_pods: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    delete_job: bool = False
    requeue_after: float | None = None

    def wake(self, seconds: float) -> None:
        """Reconcile again in ``seconds`` at the latest (the earliest of the times asked for)."""
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


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
    kind, value = str(kind), "True" if true else "False"
    for cond in conditions:
        if cond["type"] == kind:
            if cond["status"] != value:
                cond["lastTransitionTime"] = _ts(now)
            cond.update(status=value, reason=reason, message=message)
            return
    if true:  # a condition appears when it first becomes true
        conditions.append({"type": kind, "status": value, "reason": reason, "message": message,
                           "lastTransitionTime": _ts(now)})


#: The reasons of the DisruptionTarget condition Kubernetes sets on a pod before deleting it (and
#: the pod reasons of older kubelets' evictions): the disruption's kind, which is the reason of
#: the gang's restart, and what happened.
DISRUPTIONS = {
    "DeletionByTaintManager": ("NodeLost", "evicted by the taint manager (its node is not ready or "
                                           "unreachable, or has another NoExecute taint)"),
    "DeletionByPodGC": ("NodeLost", "deleted by the pod garbage collector (its node is gone or out "
                                    "of service)"),
    "PreemptionByScheduler": ("Preempted", "preempted by the scheduler for a pod of higher priority"),
    "EvictionByEvictionAPI": ("Evicted", "evicted through the Eviction API (a node drain, say)"),
    "TerminationByKubelet": ("Evicted", "terminated by its kubelet (node pressure or shutdown)"),
    "Evicted": ("Evicted", "evicted by its kubelet (node pressure)"),
    "Preempting": ("Preempted", "preempted by its kubelet for a critical pod"),
}
POD_REASON_DISRUPTIONS = ("Evicted", "Preempting")


def _disruption(p: PodState) -> tuple[str, str] | tuple[None, None]:
    if p.disruption is None:
        return None, None
    return DISRUPTIONS.get(p.disruption, ("Disrupted", f"disrupted ({p.disruption})"))


def _failed_outcome(p: PodState) -> RankOutcome:
    """A rank whose pod failed: disrupted if it was taken away (a DisruptionTarget, deleted by
    anyone) before it exited, its own failure if it exited before."""
    kind, what = _disruption(p)
    if kind is None and p.deleting:
        kind, what = "PodDeleted", "deleted while the gang ran"
    taken = p.disruption_since or p.deletion_requested
    if kind is not None and p.finished_at is not None and taken is not None and p.finished_at < taken:
        kind = what = None  # it failed first; being taken away came after
    if p.exit_code is None:  # failed before its container ran (rejected by its kubelet, say)
        why = f" ({p.reason})" if p.reason else ""
        what = what or f"its pod failed without an exit code{why}"
    elif kind is None and p.message:  # its own failure: what it said as it ended (a traceback, a stall)
        what = p.message
    return RankOutcome(p.rank, p.exit_code, p.reason, p.finished_at or p.disruption_since, kind,
                       f"pod {p.name}", p.node, what)


def _deleted_outcome(p: PodState, now: datetime) -> RankOutcome:
    """A rank whose pod is being deleted under it (by Kubernetes or anyone)."""
    kind, what = _disruption(p)
    if kind is None:
        kind, what = "PodDeleted", "deleted while the gang ran"
    return RankOutcome(p.rank, None, None, p.disruption_since or p.deletion_requested or now, kind,
                       f"pod {p.name}", p.node, what)


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
    phase = (body.get("status") or {}).get("phase") or Phase.PENDING
    return phase != Phase.PENDING or bool((body.get("metadata") or {}).get("deletionTimestamp"))


# ----------------------------------------------------------------------------- the reconcile


@dataclass
class _View:
    """One reconcile: the job, what exists, and the decision being made."""

    job: RazorJob
    old: dict[str, Any]          # the status as read
    pods: list[PodState]
    now: datetime
    d: Decision
    phase: str | None
    attempt: int
    current: dict[int, PodState] = field(default_factory=dict)  # this attempt's pod of each rank
    stale: list[PodState] = field(default_factory=list)         # pods of other attempts

    @property
    def st(self) -> dict[str, Any]:
        return self.d.status

    @property
    def nnodes(self) -> int:
        return self.job.spec.nnodes


def decide(job: RazorJob, status: dict[str, Any] | None, pods: list[PodState], now: datetime,
           service_exists: bool = True) -> Decision:
    st = copy.deepcopy(status or {})
    st.setdefault("attempt", 1)
    st.update(Restarts.from_status(st).to_status())
    v = _View(job, status or {}, pods, now, Decision(status=st), st.get("phase"), int(st["attempt"]))
    _decide(v, service_exists)
    _force_unconfirmed_deletions(v)
    return v.d


def _decide(v: _View, service_exists: bool) -> None:
    """Each policy returns True when it settled this reconcile; the ranks' status comes last."""
    for policy in (_after_finish, _suspension, _deadline):
        if policy(v):
            return
    _sort_pods(v)
    if not (_failures(v) or _success(v) or _creation(v, service_exists)):
        _running(v)
    _report_ranks(v, v.d.create_ranks)


def _after_finish(v: _View) -> bool:
    """A finished job: nothing of a failed one runs on, and its TTL deletes it."""
    if v.phase not in FINISHED:
        return False
    d, ttl = v.d, v.job.spec.ttl_seconds_after_finished
    if v.phase == Phase.FAILED:
        d.delete_pods = [p.name for p in v.pods if not p.done and not p.deleting]
    done = _parse_ts(v.st.get("completionTime"))
    if ttl is not None and done is not None:
        left = (done + timedelta(seconds=ttl) - v.now).total_seconds()
        if left <= 0:
            d.delete_job = True
            d.events.append(("Normal", "Deleted", f"finished {ttl}s ago (ttlSecondsAfterFinished)"))
        else:
            d.wake(left)
    return True


def _suspension(v: _View) -> bool:
    """suspend: true deletes the pods and keeps the job; false starts it again (pods waited for)."""
    st, d = v.st, v.d
    if v.job.spec.suspend:
        d.delete_pods = [p.name for p in v.pods if not p.deleting]
        st.pop("nextAttemptTime", None)
        st["ranksByPhase"], st["ranks"] = _counts(0, {}), []
        if v.phase != Phase.SUSPENDED:
            st["phase"] = Phase.SUSPENDED.value
            st["message"] = "suspended: pods deleted; set suspend: false to start again"
            set_condition(st, Phase.SUSPENDED, True, "Suspended", st["message"], v.now)
            set_condition(st, Phase.RUNNING, False, "Suspended", st["message"], v.now)
            d.events.append(("Normal", "Suspended", "job suspended, pods deleted"))
        return True
    if v.phase == Phase.SUSPENDED:
        set_condition(st, Phase.SUSPENDED, False, "Resumed", "suspend set to false", v.now)
        d.events.append(("Normal", "Resumed", "job resumed"))
        st["phase"] = v.phase = Phase.PENDING.value
        st.pop("startTime", None)  # the deadline counts from the new start
    return False


def _deadline(v: _View) -> bool:
    """activeDeadlineSeconds, counted from the start (the first time every rank ran)."""
    limit, start = v.job.spec.active_deadline_seconds, _parse_ts(v.st.get("startTime"))
    if not limit or start is None:
        return False
    left = (start + timedelta(seconds=limit) - v.now).total_seconds()
    if left <= 0:
        _finish(v, Phase.FAILED, "DeadlineExceeded", f"ran longer than activeDeadlineSeconds ({limit}s)", v.pods)
        return True
    v.d.wake(left)
    return False


def _sort_pods(v: _View) -> None:
    """This attempt's pod of each rank; the pods of other attempts, and of ranks beyond nnodes, go."""
    for p in v.pods:
        if p.attempt != v.attempt:
            v.stale.append(p)
        elif p.rank < v.nnodes:
            v.current[p.rank] = p
        elif not p.deleting:
            v.d.delete_pods.append(p.name)
    v.d.delete_pods += [p.name for p in v.stale if not p.deleting]


def _failures(v: _View) -> bool:
    """A failed or lost rank fails the gang: fail the job or restart every rank (razor.policy)."""
    outcomes = [_failed_outcome(p) for p in v.current.values() if p.phase == Phase.FAILED]
    outcomes += _lost_ranks(v)
    late = _late_permanent(v)
    if late is not None:  # the previous attempt's permanent failure, reported after its restart
        outcomes, attempt = [late], v.attempt - 1
    else:
        attempt = v.attempt
    if not outcomes:
        return False
    policy = Policy.from_spec(v.job.spec)
    verdict = on_failure(policy, outcomes, Restarts.from_status(v.st), attempt, v.nnodes)
    failed = [_failed_entry(o, cls, attempt) for o, cls in verdict.failed[:STATUS_RANKS]]
    if late is not None:  # first, before the failures of its attempt already listed
        failed += [e for e in v.st.get("failedRanks") or [] if e.get("rank") != late.rank][:STATUS_RANKS - 1]
    v.st["failedRanks"] = failed
    if verdict.action is Action.FAIL:
        _finish(v, Phase.FAILED, verdict.reason, verdict.message, v.pods if late else list(v.current.values()))
    else:
        _restart(v, verdict)
    return True


def _lost_ranks(v: _View) -> list[RankOutcome]:
    """Ranks the gang lost without an exit: a pod Kubernetes deletes (a DisruptionTarget: the
    taint manager on a lost node, a preemption, a drain) or anyone deletes while the gang runs, a
    pod whose node stopped reporting for nodeLostTimeoutSeconds, a pod gone from a running gang.
    A pod deleting before the gang ran (one of a suspension just lifted, say) is only waited for."""
    spec, now, running = v.job.spec, v.now, v.phase == Phase.RUNNING
    lost = [_deleted_outcome(p, now) for p in v.current.values()
            if p.deleting and not p.done and (running or p.disruption)]
    # A node that stopped reporting: Kubernetes evicts its pods (the tolerations kube.py gives
    # them), except when it thinks the control plane itself is cut off (every node of every zone
    # not ready, a one-node cluster's lost node included): then the operator gives up on them.
    bound = timedelta(seconds=spec.node_lost_timeout_seconds)
    for p in v.current.values():
        if p.deleting or p.unreachable_since is None:
            continue
        left = (p.unreachable_since + bound - now).total_seconds()
        if left > 0:
            v.d.wake(left)
        else:
            ago = int((now - p.unreachable_since).total_seconds())
            lost.append(RankOutcome(p.rank, None, None, p.unreachable_since, "NodeLost", f"pod {p.name}", p.node,
                                    f"its node stopped reporting {ago}s ago (nodeLostTimeoutSeconds "
                                    f"{spec.node_lost_timeout_seconds})"))
    if running:  # every rank ran: one without a pod is gone (its node, from the last status if named)
        nodes = {e.get("rank"): e.get("node") for e in v.old.get("ranks") or []}
        lost += [RankOutcome(r, None, None, now, "PodLost", f"pod {pod_name(v.job, r)}", nodes.get(r),
                             "gone while the gang ran") for r in range(v.nnodes) if r not in v.current]
    return lost


def _late_permanent(v: _View) -> RankOutcome | None:
    """While restarting: a pod of the attempt just given up that failed with a permanent exit
    code before it was asked to stop, reported late. It wins over the failure that restarted the
    gang (which was most likely its consequence)."""
    if v.phase != Phase.RESTARTING:
        return None
    policy = Policy.from_spec(v.job.spec)
    for p in sorted(v.stale, key=lambda p: p.rank):
        if p.attempt != v.attempt - 1 or p.phase != Phase.FAILED or p.exit_code is None:
            continue
        asked = p.deletion_requested
        if asked is not None and (p.finished_at is None or p.finished_at > asked):
            continue  # it stopped because it was deleted
        outcome = _failed_outcome(p)
        if classify(outcome, policy) is FailureClass.PERMANENT:
            return outcome
    return None


def _failed_entry(o: RankOutcome, cls: FailureClass, attempt: int) -> dict[str, Any]:
    entry = {"rank": o.rank, "attempt": attempt, "pod": (o.name or "").removeprefix("pod ") or None,
             "exitCode": o.exit_code, "reason": o.reason if o.exit_code is not None else o.disruption,
             "class": cls.value, "node": o.node, "finishedAt": _ts(o.finished) if o.finished else None,
             "message": o.detail}
    return {k: val for k, val in entry.items() if val is not None}


def _restart(v: _View, verdict: Verdict) -> None:
    """Delete every pod of the attempt; the next one is created once they are gone and the
    backoff has passed (``status.nextAttemptTime``)."""
    st, now = v.st, v.now
    st.update(verdict.restarts.to_status())
    st["attempt"] = v.attempt + 1
    st["phase"] = Phase.RESTARTING.value
    st["message"] = verdict.message
    if verdict.delay > 0:
        st["nextAttemptTime"] = _ts(datetime.fromtimestamp(math.ceil(now.timestamp() + verdict.delay),
                                                           timezone.utc))
    else:
        st.pop("nextAttemptTime", None)
    set_condition(st, Phase.RESTARTING, True, verdict.reason, verdict.message, now)
    set_condition(st, Phase.RUNNING, False, verdict.reason, verdict.message, now)
    v.d.events.append(("Warning", "Restarting", verdict.message))
    v.d.delete_pods += [p.name for p in v.current.values() if not p.deleting]


def _success(v: _View) -> bool:
    if len(v.current) == v.nnodes and all(p.phase == Phase.SUCCEEDED for p in v.current.values()):
        _finish(v, Phase.SUCCEEDED, "Completed", f"all {v.nnodes} rank(s) succeeded", [])
        return True
    return False


def _creation(v: _View, service_exists: bool) -> bool:
    """Create what is missing, once the previous attempt is gone (the names are the same) and
    its backoff has passed. True while a restart is still under way (nothing more to do)."""
    st, d, spec = v.st, v.d, v.job.spec
    if not service_exists:
        d.create_service = True
    missing = [r for r in range(v.nnodes) if r not in v.current]
    if missing and not v.stale:
        due = _parse_ts(st.get("nextAttemptTime"))
        wait = 0.0 if due is None else (due - v.now).total_seconds()
        if wait > 0:
            d.wake(wait)  # the backoff: the next attempt starts then
        else:
            st.pop("nextAttemptTime", None)
            d.create_ranks = missing
            # The gang's PodGroup first (it may exist already: kept across restarts, or an
            # operator restarted between the two), so that no pod waits for it.
            d.create_pod_group = spec.gang != "none"
            if v.attempt == 1 and not any(c["type"] == "Created" for c in st.get("conditions", [])):
                set_condition(st, "Created", True, "PodsCreated", f"service and {spec.nnodes} pod(s) created", v.now)
                d.events.append(("Normal", "Created", f"created service {v.job.name} and {len(missing)} pod(s)"))
            elif v.phase == Phase.RESTARTING:
                d.events.append(("Normal", "Created", f"attempt {v.attempt}: created {len(missing)} pod(s)"))
    return v.phase == Phase.RESTARTING and bool(v.stale or missing)


def _running(v: _View) -> None:
    """Running once every rank runs (the deadline's clock starts then), else waiting."""
    st, spec = v.st, v.job.spec
    if len(v.current) == v.nnodes and all(p.up for p in v.current.values()):
        if v.phase != Phase.RUNNING:
            st["phase"] = Phase.RUNNING.value
            st["message"] = f"all {v.nnodes} rank(s) running (attempt {v.attempt})"
            st.setdefault("startTime", _ts(v.now))
            set_condition(st, Phase.RUNNING, True, "AllRanksRunning", st["message"], v.now)
            set_condition(st, Phase.RESTARTING, False, "AllRanksRunning", st["message"], v.now)
            v.d.events.append(("Normal", "Running", st["message"]))
            if spec.active_deadline_seconds and v.d.requeue_after is None:
                v.d.wake(float(spec.active_deadline_seconds))
    else:
        unschedulable = _unschedulable(v)
        if unschedulable:
            st["phase"] = Phase.PENDING.value
            st["message"] = unschedulable
        elif v.phase != Phase.PENDING or st.get("message", "").startswith(UNSCHEDULABLE_PREFIXES):
            waiting = v.nnodes - sum(p.up for p in v.current.values())
            st["phase"] = Phase.PENDING.value
            st["message"] = f"waiting for {waiting} of {v.nnodes} rank(s) to run (attempt {v.attempt})"


#: Messages of a Pending job that say why it waits, replaced once that no longer holds (the last:
#: handlers.py's, when the PodGroup's API is not served).
UNSCHEDULABLE_PREFIXES = ("waiting for the gang:", "waiting for the scheduler:", "cannot create the PodGroup")


def _unschedulable(v: _View) -> str | None:
    """Why the attempt waits, when the scheduler says it cannot place a pod (its PodScheduled=False
    condition): with a gang scheduler none of the gang binds until all fit, without one the pods
    that fit hold their node while the rest wait."""
    waiting = sorted((p for p in v.current.values() if p.unschedulable and not p.node and not p.deleting),
                     key=lambda p: p.rank)
    if not waiting:
        return None
    scheduled = sum(1 for p in v.current.values() if p.node)
    why = waiting[0].unschedulable
    if v.job.spec.gang != "none":
        return (f"waiting for the gang: {scheduled} of {v.nnodes} pods scheduled (gang {v.job.spec.gang}, all "
                f"{v.nnodes} or none; attempt {v.attempt}): {why}")
    return (f"waiting for the scheduler: {scheduled} of {v.nnodes} pods scheduled, {len(waiting)} unschedulable "
            f"(rank {waiting[0].rank}; attempt {v.attempt}): {why}")


def _finish(v: _View, phase: Phase, reason: str, message: str, live: list[PodState]) -> None:
    st, d = v.st, v.d
    st["phase"] = phase.value
    st["message"] = message
    st["completionTime"] = _ts(v.now)
    st.pop("nextAttemptTime", None)
    for kind in (Phase.RUNNING, Phase.RESTARTING):
        set_condition(st, kind, False, reason, message, v.now)
    set_condition(st, phase, True, reason, message, v.now)
    d.events.append(("Normal" if phase == Phase.SUCCEEDED else "Warning", reason, message))
    if phase == Phase.FAILED:  # nothing of a failed job keeps running
        going = set(d.delete_pods)
        d.delete_pods += [p.name for p in live if not p.done and not p.deleting and p.name not in going]
    # The TTL's clock starts now (the deadline's, if any, no longer matters).
    d.requeue_after = v.job.spec.ttl_seconds_after_finished


# ----------------------------------------------------------------------------- the status's ranks


def _bucket(p: PodState | None) -> str:
    if p is None:
        return "pending"
    return {Phase.RUNNING: "running", Phase.SUCCEEDED: "succeeded", Phase.FAILED: "failed"}.get(p.phase, "pending")


def _counts(nnodes: int, current: dict[int, PodState]) -> dict[str, int]:
    """The attempt's ranks by phase; a rank without a pod yet is pending."""
    counts = {"pending": nnodes - len(current), "running": 0, "succeeded": 0, "failed": 0}
    for p in current.values():
        counts[_bucket(p)] += 1
    return counts


def _report_ranks(v: _View, created: list[int]) -> None:
    """status.ranksByPhase, and status.ranks: at most STATUS_RANKS of the attempt's ranks, the
    most telling ones (failed or lost first, by time, then those not running), by rank number."""
    v.st["ranksByPhase"] = _counts(v.nnodes, v.current)
    far = datetime.max.replace(tzinfo=timezone.utc)

    def interest(p: PodState) -> tuple:
        if p.phase == Phase.FAILED or (p.deleting and not p.done) or p.unreachable_since:
            return (0, p.finished_at or p.disruption_since or p.deletion_requested or p.unreachable_since or far,
                    p.rank)
        return (1 if not p.up else 2, far, p.rank)

    chosen = heapq.nsmallest(STATUS_RANKS, v.current.values(), key=interest)
    entries = [{k: val for k, val in {"rank": p.rank, "pod": p.name, "phase": p.phase, "exitCode": p.exit_code,
                                      "reason": p.reason, "node": p.node}.items() if val is not None}
               for p in chosen]
    room = STATUS_RANKS - len(entries)
    entries += [{"rank": r, "pod": pod_name(v.job, r), "phase": Phase.PENDING.value} for r in created[:room]]
    v.st["ranks"] = sorted(entries, key=lambda e: e["rank"])


# ----------------------------------------------------------------------------- lost deletions


def _force_unconfirmed_deletions(v: _View) -> None:
    """Force-delete (grace 0) the pods whose deletion no kubelet confirmed nodeLostTimeoutSeconds
    after their grace period ended; come back when the next one falls due."""
    d, job, bound = v.d, v.job, v.job.spec.node_lost_timeout_seconds
    notes = []
    for p in sorted(v.pods, key=lambda p: (p.attempt, p.rank)):
        if p.deletion_timestamp is None or p.deletion_grace == 0:
            continue  # not being deleted, or already forced (a finalizer holds it: not ours)
        left = (p.deletion_timestamp + timedelta(seconds=bound) - v.now).total_seconds()
        if left > 0:
            d.wake(left)
            continue
        d.force_delete_pods[p.name] = p.uid or ""
        where = f" lost with node {p.node}" if p.node else ""
        note = (f"rank {p.rank} (pod {p.name}){where}: not confirmed deleted {bound}s after its "
                f"grace period; force-deleted")
        d.events.append(("Warning", "ForceDeleted", note))
        notes.append(note)
    st = d.status
    if notes and st.get("phase") not in (*FINISHED, Phase.SUSPENDED):
        then = (f"; restarting all {job.spec.nnodes} rank(s) as attempt {st['attempt']}"
                if st.get("phase") == Phase.RESTARTING else "")
        st["message"] = "; ".join(notes) + then
