"""What a gang does when an attempt fails: the failure policy, pure and the same on every backend.

A backend reports how the ranks of a failed attempt ended, as :class:`RankOutcome`s (the
Kubernetes operator from its pods' statuses, the local supervisor from its processes, the SLURM
bridge from its tasks and nodes), and asks :func:`on_failure` with the spec's policy
(:meth:`Policy.from_spec`) and the restart counters so far (:class:`Restarts`, kept in the job's
status). The :class:`Verdict` says what to do: fail the job, or restart every rank as the next
attempt, counted against ``backoffLimit`` or not, after how long, and the message and reason to
report. No I/O here, no clock: the caller passes the times.

Each failed or lost rank falls in one class (:func:`classify`):

- **permanent**: an exit code in ``permanentExitCodes`` (2, 126, 127 by default: a bad config, a
  command that cannot run). The job fails at once: a restart would only fail again. A permanent
  exit code on *any* rank decides, whatever failed before it: the peers of a rank that failed
  for good fail after it, and their follow-on failures must not hide it.
- **disruption**: the rank was taken away from outside: preempted, evicted, its node lost, its
  pod deleted (``RankOutcome.disruption`` names how), or it stopped on a stop signal and exited
  with 75 (``razor.node.EXIT_PREEMPTED``). The gang restarts at once, and the restart does not
  count against ``backoffLimit``: a job on spot capacity never fails for its cluster's doing.
- **retryable**: an exit code in ``retryableExitCodes`` (a collective timeout, say), and 124
  (``razor.node.EXIT_STALLED``: no progress for ``progressTimeoutSeconds``) unless the job lists
  124 in ``permanentExitCodes``. The gang restarts after the backoff, not counted against
  ``backoffLimit``: a hang is most often the cluster's (a lost link, a stuck GPU), and the
  restart resumes from the last checkpoint. A code in ``retryableExitCodes`` wins over
  ``permanentExitCodes`` (a job may make one of the cluster's permanent codes retryable).
- **failure**: anything else (a crash, an OOM kill). The gang restarts after the backoff, counted
  against ``backoffLimit``; when ``backoffLimit`` counted restarts were made already, the job fails.

Otherwise the failure that decides is the first one by time (``finished``), not the lowest rank:
the others are mostly its consequences. Equal times (a kubelet reports whole seconds) go to the
more serious class (failure, then retryable, then disruption), then to the lower rank.

The backoff: the n-th restart after a failure or a retryable exit waits
``restartBackoffSeconds * 2**(n-1)``, at most ``restartBackoffMaxSeconds`` (10 s and 6 min by
default, as a Kubernetes Job), so a crash loop cannot burn its budget in seconds. A disruption
restarts without waiting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

from .node import EXIT_PREEMPTED, EXIT_STALLED


class Phase(str, Enum):
    """A job's phase, the same words on every backend (``status.phase`` on Kubernetes)."""

    PENDING = "Pending"          # its ranks are being created, or wait to run
    RUNNING = "Running"          # every rank runs
    RESTARTING = "Restarting"    # a failed attempt is being replaced by the next
    SUCCEEDED = "Succeeded"      # every rank exited 0
    FAILED = "Failed"            # given up: a permanent failure, backoffLimit, a deadline
    SUSPENDED = "Suspended"      # no pods, kept until resumed

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class FailureClass(str, Enum):
    """How a failed or lost rank counts (see the module's docstring)."""

    PERMANENT = "Permanent"
    FAILURE = "Failure"
    RETRYABLE = "Retryable"
    DISRUPTION = "Disruption"

    def __str__(self) -> str:
        return self.value


#: Equal times: the more serious class decides.
_SERIOUS = {FailureClass.PERMANENT: 0, FailureClass.FAILURE: 1, FailureClass.RETRYABLE: 2,
            FailureClass.DISRUPTION: 3}


class Action(str, Enum):
    FAIL = "Fail"        # the job is Failed; stop what still runs
    RESTART = "Restart"  # stop every rank, then start them all as the next attempt

    def __str__(self) -> str:
        return self.value


#: The head of razor.node's message for a failed training process (razor.node.failure_message).
_NODE_MESSAGE = re.compile(r"rank (\d+) exited with code (\d+)")


@dataclass(frozen=True)
class RankOutcome:
    """How one rank of an attempt ended: it exited (``exit_code``) or it was lost (no exit code)."""

    rank: int
    exit_code: int | None = None
    #: The backend's word for it: a container's terminated reason (OOMKilled, Error), a signal.
    reason: str | None = None
    #: When it failed (a container's finishedAt; when it was deleted or lost); None: unknown,
    #: ordered after every known time.
    finished: datetime | None = None
    #: Not None when it was taken away from outside: how (Preempted, Evicted, NodeLost, PodDeleted,
    #: PodLost: also the reason reported for the restart).
    disruption: str | None = None
    #: How the backend names the rank's unit in messages: "pod kd-1", "node gpu-7".
    name: str | None = None
    node: str | None = None
    #: What happened, for a lost rank or a disruption: "evicted by the taint manager (...)".
    detail: str | None = None

    @property
    def lost(self) -> bool:
        return self.exit_code is None

    def describe(self) -> str:
        """``rank 2 (pod kd-2) exited with code 137 (OOMKilled)``, ``rank 1 (pod kd-1) lost with
        node n1: evicted by the taint manager (...)``, ``rank 1 (pod kd-1) exited with code 1:
        ValueError: ...`` and the traceback's last lines (razor.node's message as the detail)."""
        who = f"rank {self.rank} ({self.name})" if self.name else f"rank {self.rank}"
        if self.lost:
            where = f" with node {self.node}" if self.node else ""
            return f"{who} lost{where}: {self.detail or 'gone'}"
        why = f" ({self.reason})" if self.reason else ""
        text = f"{who} exited with code {self.exit_code}{why}"
        detail = self.detail
        m = _NODE_MESSAGE.match(detail or "")
        if m and int(m.group(2)) == self.exit_code:
            # razor.node's "rank R exited with code C: ..." says again what ``text`` says; R is
            # the training process's own rank, named when it is not this rank's.
            detail = detail[m.end():].lstrip(": ")
            if int(m.group(1)) != self.rank:
                text += f", its process rank {m.group(1)}"
            if detail.startswith("("):
                return f"{text} {detail}"
        return f"{text}: {detail}" if detail else text


@dataclass(frozen=True)
class Policy:
    """The spec's failure policy fields."""

    backoff_limit: int = 3
    permanent_exit_codes: frozenset[int] = frozenset({2, 126, 127})
    retryable_exit_codes: frozenset[int] = frozenset()
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 360.0

    @classmethod
    def from_spec(cls, spec: Any) -> "Policy":
        """From a :class:`razor.spec.RazorJobSpec` (with the cluster's defaults applied, if any)."""
        return cls(spec.backoff_limit, frozenset(spec.permanent_exit_codes),
                   frozenset(spec.retryable_exit_codes), float(spec.restart_backoff_seconds),
                   float(spec.restart_backoff_max_seconds))


@dataclass(frozen=True)
class Restarts:
    """The restart counters of a job: every restart (``total``), those counted against
    ``backoffLimit`` (``counted``), and those after a disruption (``disruptions``); the rest
    followed a retryable exit code. Kept in the status as ``restarts``, ``countedRestarts`` and
    ``disruptionRestarts``."""

    total: int = 0
    counted: int = 0
    disruptions: int = 0

    @property
    def backed_off(self) -> int:
        """The restarts that waited for the backoff: after a failure or a retryable exit code."""
        return self.total - self.disruptions

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> "Restarts":
        """The counters of a status; one written before the counters were told apart counted
        every restart."""
        st = status or {}
        total = int(st.get("restarts") or 0)
        disruptions = int(st.get("disruptionRestarts") or 0)
        counted = st.get("countedRestarts")
        return cls(total, total - disruptions if counted is None else int(counted), disruptions)

    def to_status(self) -> dict[str, int]:
        return {"restarts": self.total, "countedRestarts": self.counted, "disruptionRestarts": self.disruptions}


@dataclass(frozen=True)
class Verdict:
    """What to do about a failed attempt."""

    action: Action
    failure_class: FailureClass            # the class of the failure that decided
    culprit: RankOutcome                   # the failure that decided
    #: Every failed or lost rank with its class, the culprit first, then by time.
    failed: tuple[tuple[RankOutcome, FailureClass], ...]
    restarts: Restarts                     # the counters after this restart (as they were, to fail)
    delay: float                           # seconds before the next attempt may start
    reason: str                            # a CamelCase reason for conditions and events
    message: str                           # the culprit, and what happens

    @property
    def counted(self) -> bool:
        return self.action is Action.RESTART and self.failure_class is FailureClass.FAILURE


def classify(outcome: RankOutcome, policy: Policy) -> FailureClass:
    code = outcome.exit_code
    if code is not None and code in policy.retryable_exit_codes:
        return FailureClass.RETRYABLE
    if code is not None and code in policy.permanent_exit_codes:
        return FailureClass.PERMANENT
    if outcome.disruption is not None or code == EXIT_PREEMPTED:
        return FailureClass.DISRUPTION
    if code == EXIT_STALLED:
        return FailureClass.RETRYABLE
    return FailureClass.FAILURE


def ordered(outcomes: Iterable[RankOutcome], policy: Policy) -> list[tuple[RankOutcome, FailureClass]]:
    """The failed or lost ranks with their classes, the deciding one first: a permanent failure,
    else the first by time, ties to the more serious class, then to a rank killed by a signal
    (exit code above 128: the OOM killer, a kill; its peers' follow-on failures are exceptions,
    exit 1), then the lower rank. Ties are common: Kubernetes' finishedAt has whole seconds."""
    def key(item: tuple[RankOutcome, FailureClass]) -> tuple:
        o, c = item
        when = (0, o.finished.timestamp()) if o.finished is not None else (1, 0.0)
        signalled = o.exit_code is not None and o.exit_code > 128
        return (c is not FailureClass.PERMANENT, when, _SERIOUS[c], not signalled, o.rank)
    return sorted(((o, classify(o, policy)) for o in outcomes), key=key)


def backoff_delay(policy: Policy, n: int) -> float:
    """The wait before the ``n``-th restart (1, 2, ...) after a failure or a retryable exit code."""
    if n <= 0 or policy.backoff_seconds <= 0:
        return 0.0
    return float(min(policy.backoff_seconds * 2 ** min(n - 1, 40), policy.backoff_max_seconds))


def _seconds(value: float) -> str:
    return f"{value:g}s"


def on_failure(policy: Policy, outcomes: Iterable[RankOutcome], restarts: Restarts, attempt: int,
               nnodes: int) -> Verdict:
    """The verdict on a failed ``attempt`` of an ``nnodes``-rank gang, from its failed or lost
    ranks (at least one) and the restart counters so far."""
    failed = tuple(ordered(outcomes, policy))
    if not failed:
        raise ValueError("on_failure needs at least one failed or lost rank")
    culprit, cls = failed[0]
    # A detail of several lines (a traceback's end) follows the verdict: the first line says all.
    what, *traceback = culprit.describe().splitlines() or [""]

    def verdict(action: Action, counters: Restarts, delay: float, reason: str, message: str) -> Verdict:
        return Verdict(action, cls, culprit, failed, counters, delay, reason, "\n".join([message, *traceback]))

    if cls is FailureClass.PERMANENT:
        return verdict(Action.FAIL, restarts, 0.0, "PermanentFailure",
                       f"{what}; exit code {culprit.exit_code} is permanent, not restarted")
    if cls is FailureClass.FAILURE and restarts.counted >= policy.backoff_limit:
        others = restarts.total - restarts.counted
        more = f" ({others} more not counted)" if others else ""
        return verdict(Action.FAIL, restarts, 0.0, "BackoffLimitExceeded",
                       f"{what}; backoffLimit {policy.backoff_limit} reached after {restarts.counted} "
                       f"restart(s){more}")
    after = replace(restarts, total=restarts.total + 1,
                    counted=restarts.counted + (cls is FailureClass.FAILURE),
                    disruptions=restarts.disruptions + (cls is FailureClass.DISRUPTION))
    delay = 0.0 if cls is FailureClass.DISRUPTION else backoff_delay(policy, after.backed_off)
    head = f"{what}; restarting all {nnodes} rank(s) as attempt {attempt + 1}"
    if delay:
        head += f" in {_seconds(delay)}"
    if cls is FailureClass.FAILURE:
        return verdict(Action.RESTART, after, delay, "RankFailed",
                       f"{head} (restart {after.counted} of {policy.backoff_limit})")
    if cls is FailureClass.RETRYABLE:
        return verdict(Action.RESTART, after, delay, "RetryableExitCode",
                       f"{head} (exit code {culprit.exit_code} is retryable: not counted against backoffLimit)")
    return verdict(Action.RESTART, after, delay, culprit.disruption or "Preempted",
                   f"{head} (a disruption: not counted against backoffLimit)")
