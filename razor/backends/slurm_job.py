"""What runs inside the allocation after srun failed: the job's failure policy, done.

The sbatch script (razor.slurm) runs ``python -m razor.backends.slurm_job after-srun`` when srun
ends with a failure: :func:`after_srun` asks razor.policy what to do with the ranks that failed
(read from srun's own report of its tasks, ``srun: error: node2: task 1: Exited with exit code 3``)
and does it: requeue the job as the next attempt (``scontrol requeue``; SLURM_RESTART_COUNT + 1),
after the backoff (its StartTime) and without the node of a counted failure (its ExcNodeList)
where enough nodes are left, or let it fail. The counters SLURM does not keep and the verdict go
to the job's Comment (razor.backends.slurm_records), where razorctl reads them.

Apart from razorctl's side (razor.backends.slurm) because it runs elsewhere (on the batch host,
with the nodes' Python) and needs none of it. Reading srun's report (:func:`srun_report`) and
turning it into razor.policy's outcomes (:func:`failed_ranks`) are pure, tested without SLURM;
the rest asks scontrol and sinfo and acts.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

from .. import progress
from ..node import EXIT_PREEMPTED
from ..policy import Action, FailureClass, Phase, Policy, RankOutcome, Restarts, on_failure
from .slurm_records import CommentState, as_int, counters, record_fields, run, task_ids

# ----------------------------------------------------------------------------- srun's report, the outcomes: pure

#: Node states (sinfo %T, scontrol State) in which a node cannot run the next attempt.
UNUSABLE_NODE = ("DOWN", "DRAIN", "FAIL", "MAINT", "INVAL", "FUTURE", "NOT_RESPONDING", "POWER")

#: ``srun: error: node2: task 1: Exited with exit code 3``, ``srun: error: vm: tasks 0-1: Killed``.
_TASK = re.compile(r"^srun: error: (?P<host>\S+): tasks? (?P<tasks>[\d,\-]+): (?P<what>.+?)\s*$")
#: srun ends the step after the first task that failed (--kill-on-bad-exit): what ends after it
#: was stopped by SLURM (a rank stopped so exits 75: no disruption, a consequence).
_STEP_STOP = re.compile(r"Terminating (job )?StepId|\*\*\* STEP \S+ ON \S+ CANCELLED|Force Terminated")
#: ``srun: error: Node failure on node2``.
_NODE_FAILURE = re.compile(r"srun: error: Node failure on (?P<host>\S+)")
_SIGNAL_TEXT = {signal.strsignal(s): s for s in signal.Signals if signal.strsignal(s)}


@dataclass(frozen=True)
class TaskEnd:
    """One task (one node: --ntasks-per-node=1, so its task id is its node rank) as srun reported it."""

    rank: int
    host: str
    exit_code: int | None    # None: its node failed
    reason: str | None = None


def srun_report(text: str) -> tuple[list[TaskEnd], list[TaskEnd]]:
    """The tasks srun reports ended badly, in the order it saw them end: those before srun stopped
    the step (the attempt's failures), and those after (stopped because of them)."""
    before: list[TaskEnd] = []
    after: list[TaskEnd] = []
    stopped = False
    for line in text.splitlines():
        if _STEP_STOP.search(line):
            stopped = True
            continue
        failure = _NODE_FAILURE.search(line)
        m = _TASK.match(line.strip())
        if failure:
            (after if stopped else before).append(TaskEnd(-1, failure.group("host"), None, "NodeFailure"))
            continue
        if not m:
            continue
        what = m.group("what").removesuffix("(core dumped)").strip()
        code = re.fullmatch(r"Exited with exit code (\d+)", what)
        if code:
            exit_code, reason = int(code.group(1)), None
        elif what in _SIGNAL_TEXT:
            exit_code, reason = 128 + _SIGNAL_TEXT[what], _SIGNAL_TEXT[what].name
        else:
            exit_code, reason = 1, what
        for rank in task_ids(m.group("tasks")):
            (after if stopped else before).append(TaskEnd(rank, m.group("host"), exit_code, reason))
    return before, after


def node_usable(state: str) -> bool:
    """Whether a node in ``state`` (scontrol's State, sinfo's %T) can run an attempt."""
    up = state.upper()
    return not up.endswith("*") and not any(word in up for word in UNUSABLE_NODE)


def failed_ranks(before: list[TaskEnd], srun_code: int, nodes: dict[str, tuple[str, str]],
                 job_nodes: list[str], now: datetime, messages: dict[int, str] | None = None) -> list[RankOutcome]:
    """razor.policy's view of a failed attempt: each task srun saw fail before it stopped the
    step, in order (a node that is down or not responding now: that rank was lost with it, a
    disruption). ``nodes``: the state and reason of the nodes named; ``job_nodes``: the
    allocation's hosts, in node-rank order; ``messages``: what each node's razor.node said of
    its failure (its end record: a rank's exception, a stall), by node rank."""
    messages = messages or {}
    out = []
    for i, t in enumerate(before):
        when = now - timedelta(milliseconds=len(before) - i)  # srun's order is the order they ended
        rank = t.rank if t.rank >= 0 else (job_nodes.index(t.host) if t.host in job_nodes else 0)
        state, why = nodes.get(t.host, ("", ""))
        if t.exit_code is None or (state and not node_usable(state)):
            why = f" ({why})" if why and why != "(null)" else ""
            detail = f"node {t.host} is {state or 'lost'}{why}".replace("=", ":")
            out.append(RankOutcome(rank, None, None, when, "NodeFail", t.host, t.host, detail))
        else:
            detail = "stopped on a signal (checkpoint saved)" if t.exit_code == EXIT_PREEMPTED else messages.get(rank)
            out.append(RankOutcome(rank, t.exit_code, t.reason, when, None, t.host, t.host, detail))
    if not out:
        out.append(RankOutcome(0, srun_code or 1, None, now, detail="srun named no task that failed"))
    return out


def node_messages(work_dir: str | None, attempt: int) -> dict[int, str]:
    """The failure messages the nodes of ``attempt`` left in the work dir (razor.node's end
    records), by node rank: the first line only (the Comment that keeps it is one line; the
    status shows the rest)."""
    if not work_dir:
        return {}
    out = {}
    for rank, end in progress.read_node_ends(work_dir).items():
        if as_int(str(end.get("attempt"))) == attempt and end.get("exitCode") and end.get("message"):
            out[rank] = str(end["message"]).splitlines()[0]
    return out


# ----------------------------------------------------------------------------- in the job: scontrol, sinfo, the verdict


def _scontrol_record(kind: str, name: str) -> dict[str, str]:
    res = run(["scontrol", "show", kind, "-o", name], check=False)
    lines = res.stdout.strip().splitlines() if res.returncode == 0 else []
    return record_fields(lines[0]) if lines else {}


def _hostnames(expr: str) -> list[str]:
    if not expr or expr in ("(null)", "None"):
        return []
    return run(["scontrol", "show", "hostnames", expr], check=False).stdout.split()


def exclusion(culprit: RankOutcome, failure_class: FailureClass, rec: dict[str, str],
              nnodes: int) -> tuple[str | None, str]:
    """The ExcNodeList of the next attempt without the culprit's node (None: unchanged), and what
    to add to the message: a counted failure or a lost node is kept away from the next attempts,
    as long as the job's partition keeps enough usable nodes for it (else it would wait forever)."""
    node = culprit.node
    if node is None or not (failure_class is FailureClass.FAILURE or culprit.disruption == "NodeFail"):
        return None, ""
    excluded = _hostnames(rec.get("ExcNodeList", ""))
    if node in excluded:
        return None, ""
    partition = rec.get("Partition", "")
    res = run(["sinfo", "-h", "-N", *(["-p", partition] if partition else []), "-o", "%N %T"], check=False)
    states = dict(line.split(None, 1) for line in res.stdout.splitlines() if len(line.split()) == 2)
    usable = [n for n, st in states.items() if n != node and n not in excluded and node_usable(st)]
    if len(usable) < nnodes:
        return None, (f"; node {node} not excluded: partition {partition or '(default)'} would keep "
                      f"{len(usable)} usable node(s) for {nnodes}")
    return ",".join([*excluded, node]), f"; node {node} excluded from the next attempts"


def after_srun(srun_code: int, srun_log: Path, policy: Policy, nnodes: int,
               environ: dict[str, str] | None = None, out: IO[str] | None = None) -> int:
    """In the job, after srun failed: the verdict of razor.policy, done. Returns the batch
    script's exit code (the failure's, when the job fails)."""
    env = os.environ if environ is None else environ
    out = out or sys.stdout

    def say(text: str) -> None:
        print(f"razor: {text}", file=out, flush=True)

    job_id = env["SLURM_JOB_ID"]
    restarted = as_int(env.get("SLURM_RESTART_COUNT"))
    attempt = restarted + 1

    def slurm_ends_it(rec: dict[str, str]) -> bool:
        """Whether SLURM itself is ending the job (cancelled, preempted, a node failed): then it
        decides what comes next, and razor must not requeue a job its user cancelled."""
        state = rec.get("JobState", "")
        if state and state != "RUNNING":
            say(f"SLURM is ending attempt {attempt} itself ({state}): it decides what comes next")
            return True
        return False

    # The script ignores SIGTERM for the requeue's sake; until then, a cancel must end this too.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rec = _scontrol_record("job", job_id)
    if slurm_ends_it(rec):
        return srun_code
    try:
        text = srun_log.read_text(errors="replace")
    except OSError:
        text = ""
    before, _ = srun_report(text)
    nodes = {}
    for host in {t.host for t in before}:
        node = _scontrol_record("node", host)
        nodes[host] = (node.get("State", ""), node.get("Reason", ""))
    outcomes = failed_ranks(before, srun_code, nodes, _hostnames(env.get("SLURM_JOB_NODELIST", "")),
                            datetime.now(timezone.utc), node_messages(env.get("RAZOR_WORK_DIR"), attempt))
    restarts = counters(restarted, rec.get("Comment"))
    verdict = on_failure(policy, outcomes, restarts, attempt, nnodes)

    def comment(phase: Phase, next_attempt: int, r: Restarts, message: str) -> None:
        retryable = r.total - r.counted - r.disruptions
        text = CommentState(phase.value, next_attempt, r.counted, retryable, message).text()
        res = run(["scontrol", "update", f"JobId={job_id}", f"Comment={text}"], check=False)
        if res.returncode != 0:
            say(f"could not record the restart counters in the job's Comment: {res.stderr.strip()}")

    if verdict.action is Action.FAIL:
        comment(Phase.FAILED, attempt, restarts, verdict.message)
        say(verdict.message)
        return verdict.culprit.exit_code or srun_code or 1
    exclude, note = exclusion(verdict.culprit, verdict.failure_class, rec, nnodes)
    message = verdict.message + note
    comment(Phase.RESTARTING, attempt + 1, verdict.restarts, message)
    say(message)
    if slurm_ends_it(_scontrol_record("job", job_id)):  # cancelled meanwhile: no requeue
        return srun_code
    # scontrol requeue ends this job's processes with SIGTERM: this one sets the next attempt up
    # first (the job is COMPLETING, then PENDING; SIGKILL comes KillWait later).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    res = run(["scontrol", "requeue", job_id], check=False)
    if res.returncode != 0:
        say(f"scontrol requeue {job_id} failed: {(res.stderr or res.stdout).strip()}; the job ends here")
        return verdict.culprit.exit_code or srun_code or 1
    if verdict.delay > 0:
        run(["scontrol", "update", f"JobId={job_id}", f"StartTime=now+{int(-(-verdict.delay // 1))}"], check=False)
    if exclude:
        res = run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={exclude}"], check=False)
        if res.returncode != 0:
            say(f"could not exclude node(s) {exclude}: {(res.stderr or res.stdout).strip()}")
    return srun_code


def _codes(text: str) -> frozenset[int]:
    return frozenset(int(c) for c in text.split(",") if c.strip())


def main(argv: list[str] | None = None) -> int:
    """``python -m razor.backends.slurm_job after-srun ...``: what the sbatch script runs after srun failed."""
    parser = argparse.ArgumentParser(prog="python -m razor.backends.slurm_job")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("after-srun", help="the failure policy, in the job, after srun failed")
    p.add_argument("--exit-code", type=int, required=True, help="srun's exit code")
    p.add_argument("--srun-log", type=Path, required=True, help="srun's own stderr")
    p.add_argument("--nnodes", type=int, required=True)
    p.add_argument("--backoff-limit", type=int, required=True)
    p.add_argument("--permanent-exit-codes", default="")
    p.add_argument("--retryable-exit-codes", default="")
    p.add_argument("--restart-backoff-seconds", type=float, required=True)
    p.add_argument("--restart-backoff-max-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    policy = Policy(args.backoff_limit, _codes(args.permanent_exit_codes), _codes(args.retryable_exit_codes),
                    args.restart_backoff_seconds, args.restart_backoff_max_seconds)
    return after_srun(args.exit_code, args.srun_log, policy, args.nnodes)


if __name__ == "__main__":
    sys.exit(main())
