"""The local backend's supervisor: what runs a plan's nodes on this machine, once razorctl has
checked the job and chosen its port (razor.backends.local).

:class:`Supervisor` starts every node of a :class:`LocalPlan` (or one node of it, ``--node-rank``)
as a process, streams each node's output prefixed by its rank, stops the whole gang when one node
fails (no rank is left hanging in a collective), and applies the job's failure policy as every
backend does (razor.policy): the whole gang starts again as the next attempt (RAZOR_ATTEMPT + 1;
the trainer resumes from its checkpoint) after the backoff, counted against ``backoffLimit`` or
not, or the job fails. Ctrl-C is passed on as a checkpoint-and-stop (the nodes get the job's
terminationGracePeriodSeconds, as a pod would, then are killed) and is never followed by a
restart.

One node of a gang (``--node-rank``) is supervised the same way, except that it is never
restarted: nothing coordinates the machines, and a node that started again alone would wait at
the rendezvous for peers that have ended. It ends with its exit code and the failure's message;
the same commands run again resume the job from its last checkpoint.

It is apart from razor.backends.local because it is the one long-running, signal-handling,
threaded piece of the backend: the plan, the checks and the Backend methods read without it.
:class:`LocalPlan` (with :func:`describe` and :func:`free_port`, which a next attempt of
``port: auto`` needs) lives here, below razor.backends.local, because the supervisor runs it and
razor.backends.local builds it; the job record it keeps is razor.backends.local_jobs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ..launcher import EXIT_PREEMPTED, NodeLaunch, run_vars
from ..node import kill_tree, port_free
from ..policy import Action, Phase, Policy, RankOutcome, Restarts, on_failure
from ..progress import STATUS_DIR, read_node_ends, rfc3339
from ..spec import RazorJob
from . import Refused
from .local_jobs import JobRecord

# ----------------------------------------------------------------------------- the plan it runs (pure)


MASTER_ADDR = "127.0.0.1"


class PortInUse(Refused):
    pass


@dataclass(frozen=True)
class LocalPlan:
    """What ``submit --local`` runs: every node of the job (``node_rank`` None), or only node
    ``node_rank`` of a job whose other nodes run on other machines, meeting at ``master_addr``."""

    job: RazorJob
    port: int
    port_source: str
    cwd: Path
    nodes: list[NodeLaunch]
    master_addr: str = MASTER_ADDR
    node_rank: int | None = None

    @property
    def one_node(self) -> bool:
        return self.node_rank is not None

    @property
    def work_dir(self) -> Path:
        return self.cwd / self.job.spec.work_dir


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("0.0.0.0", 0))
            port = sock.getsockname()[1]
        if port_free(port):
            return port
    raise PortInUse("could not find a free port")


def describe(p: LocalPlan) -> str:
    spec = p.job.spec
    device = f"{spec.gpus_per_node} GPU(s) per node, nccl" if spec.gpus_per_node else "CPU, gloo"
    procs = spec.nproc_per_node
    size = (f"node {p.node_rank} of {spec.nnodes}" if p.one_node else f"{spec.nnodes} node(s)")
    return (f"job {p.job.name}: {size} x {procs} process(es) ({device}), "
            f"rendezvous {p.master_addr}:{p.port} ({p.port_source}), work dir {spec.work_dir}")


# ----------------------------------------------------------------------------- run (I/O)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if razorctl dies, so no node outlives its supervisor."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


#: After a node fails, how long the others get to stop before they are killed: their peer is gone,
#: so a checkpoint would wait in a collective that never completes.
FAILURE_GRACE = 15.0
#: How long the next attempt waits for a fixed port that the previous attempt's processes still hold.
PORT_WAIT = 10.0


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt ended: each node's rank, exit code (a signal as 128 + its number) and when
    it exited (``time.time()``), and when razor asked the nodes to stop (None: it never did)."""

    ranks: list[int]
    codes: list[int]
    ended: list[float]
    stop_asked: float | None


def with_attempt(p: LocalPlan, attempt: int, port: int, port_source: str) -> LocalPlan:
    """The same plan for another attempt: each node's RAZOR_ATTEMPT and port, its command kept."""
    run = {**{name: str(attempt) for name in run_vars("attempt")},
           **{name: str(port) for name in run_vars("master_port")}}
    nodes = [NodeLaunch(n.rank, {**n.env, **{k: v for k, v in run.items() if k in n.env}}, n.argv)
             for n in p.nodes]
    return LocalPlan(p.job, port, port_source, p.cwd, nodes, p.master_addr, p.node_rank)


#: How often a node that is not the master says that it still waits for the master.
MASTER_NOTE_EVERY = 10.0
#: What the failure of one node of a gang (``--node-rank``) says instead of a restart.
NOT_RESTARTED = ("not restarted: one node of a job on several machines (--node-rank) is started again only "
                 "together with its peers, and nothing here starts them; run the same razorctl command on "
                 "every machine again to resume from the last checkpoint")
#: The phase a record shows for a job stopped by Ctrl-C or ``razorctl cancel --local`` (resumable).
STOPPED = "Stopped"


class Supervisor:
    """Runs a plan's nodes as a gang, with the job's failure policy (razor.policy): when a node
    fails, the others are stopped, and the whole gang is started again as the next attempt (or
    the job fails) as ``razor.policy.on_failure`` decides, after its backoff.

    After a stop (Ctrl-C, SIGTERM to razorctl) each node has ``grace`` seconds to save a
    checkpoint and exit, the job's ``terminationGracePeriodSeconds`` unless given: razor.node stops
    its training within it (RAZOR_STOP_GRACE), and what is left is killed after it. A stop is
    never followed by a restart.

    One node of a gang (``plan.one_node``) is never restarted (see the module's docstring); a node
    other than the master first waits, bounded by ``spec.masterAddrTimeoutSeconds``, until the
    master's rendezvous port answers, so that a master that never comes is one clear line.

    With a ``record``, the job's phase, attempt and end are kept there for ``razorctl status
    --local``, and each node's output is copied to ``<work_dir>/razor-status/logs/node-<rank>.log``."""

    def __init__(self, p: LocalPlan, out: IO[str] | None = None, grace: float | None = None,
                 record: JobRecord | None = None):
        self.plan, self.out = p, out or sys.stdout
        self.grace = float(p.job.spec.termination_grace_period_seconds if grace is None else grace)
        self.record = record
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stop_reason: str | None = None
        self.policy = Policy.from_spec(p.job.spec)
        self.restarts = Restarts()
        self.attempt = 1
        self.phase = Phase.PENDING
        self._exits: dict[int, tuple[int, float]] = {}  # rank: (exit code, when), this attempt
        self._logs: dict[int, IO[str]] = {}

    def say(self, msg: str) -> None:
        with self.lock:
            self.out.write(f"razor: {msg}\n")
            self.out.flush()

    def _pump(self, rank: int, stream: IO[bytes]) -> None:
        prefix = f"[node{rank}] " if len(self.plan.nodes) > 1 else ""
        log = self._logs.get(rank)
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self.lock:
                self.out.write(f"{prefix}{line}\n")
                self.out.flush()
                if log is not None:
                    try:
                        log.write(f"{line}\n")
                        log.flush()
                    except OSError:  # a full disk must not stop the job's output here
                        pass
        stream.close()

    def _reap(self, rank: int, proc: subprocess.Popen) -> None:
        """Wait for one node and note when it exited (the policy orders failures by time)."""
        code = proc.wait()
        with self.lock:
            self._exits[rank] = (code if code >= 0 else 128 - code, time.time())

    def _running(self) -> bool:
        return any(proc.poll() is None for proc in self.procs)

    def _signal(self, signum: int, _frame: object) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
            if self._running():
                self.say(f"{self.stop_reason}: stopping all nodes (they save a checkpoint first); what is "
                         f"still running after {self.grace:g}s is killed, or now on a second Ctrl-C")
                self._terminate()
            else:
                self.say(f"{self.stop_reason}: stopping; no further attempt starts")
        else:  # a second Ctrl-C: no more waiting
            self.say("stopping now")
            self._kill()

    def _terminate(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_tree(proc.pid)  # razor.node, torchrun and the workers (each in its own session)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of an exited node's group
            except (ProcessLookupError, PermissionError):
                pass

    def _note(self, **fields: Any) -> None:
        """Keep the record current (phase, attempt, restarts, port) for razorctl status --local."""
        if self.record is not None:
            self.record.update(**{"phase": str(self.phase), "attempt": self.attempt, "port": self.plan.port,
                                  "restarts": self.restarts.to_status(), **fields})

    def _end(self, phase: str, code: int, message: str) -> int:
        """Record how the job ended; returns ``code``, razorctl's exit code."""
        if self.record is not None:
            self._note(phase=phase, end={"phase": phase, "exitCode": code, "message": message,
                                         "finishedAt": rfc3339(time.time())})
        return code

    def _open_logs(self) -> None:
        """Each node's log for this run, emptied: a new submit is a new run (its attempts follow
        one another in the same file)."""
        folder = self.plan.work_dir / STATUS_DIR / "logs"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for node in self.plan.nodes:
                self._logs[node.rank] = open(folder / f"node-{node.rank}.log", "w")
        except OSError as exc:
            self.say(f"cannot write the nodes' logs in {folder} ({exc.strerror}); razorctl logs --local "
                     "will have nothing to show")

    def run(self) -> int:
        p = self.plan
        p.work_dir.mkdir(parents=True, exist_ok=True)
        self.say(describe(p))
        if p.one_node and p.node_rank == 0 and p.job.spec.nnodes > 1 and p.master_addr == MASTER_ADDR:
            self.say(f"the other nodes reach this machine at the address they are given with --master-addr "
                     f"(port {p.port}); give this node that address too (--master-addr) so that gloo and "
                     "NCCL use its network interface")
        handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        ended = False
        if self.record is not None:
            self._open_logs()
        try:
            code = self._supervise(started)
            ended = True
            return code
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            for log in self._logs.values():
                log.close()
            if not ended:  # razorctl itself failed: its record must not show a job still running
                self._end(str(Phase.FAILED), 1, "razorctl ended unexpectedly (see its output)")

    def _supervise(self, started: float) -> int:
        p = self.plan
        while True:
            if p.one_node and p.node_rank != 0:
                waited = self._wait_for_master()
                if self.stop_reason:
                    return self._stopped(started, [130])  # nothing ran: no checkpoint was saved
                if waited is not None:
                    self.phase = Phase.FAILED
                    self.say(self._summary(started, waited))
                    return self._end(str(self.phase), 1, waited)
            end = self._run_attempt()
            if all(c == 0 for c in end.codes):
                self.phase = Phase.SUCCEEDED
                self.say(self._summary(started, f"work dir {p.job.spec.work_dir}"))
                return self._end(str(self.phase), 0, f"work dir {p.job.spec.work_dir}")
            if self.stop_reason:
                return self._stopped(started, end.codes)
            verdict = on_failure(self.policy, self._outcomes(end), self.restarts, self.attempt,
                                 len(self.plan.nodes))
            if verdict.action is Action.FAIL or p.one_node:
                self.phase = Phase.FAILED
                message = (verdict.message if verdict.action is Action.FAIL
                           else f"{verdict.culprit.describe()}; {NOT_RESTARTED}")
                self.say(self._summary(started, message))
                return self._end(str(self.phase), verdict.culprit.exit_code or 1, message)
            self.phase = Phase.RESTARTING
            self._note()
            self.say(verdict.message)
            culprit_ended = verdict.culprit.finished.timestamp() if verdict.culprit.finished else time.time()
            self._wait_until(culprit_ended + verdict.delay)  # the backoff counts from the failure
            if self.stop_reason:
                return self._stopped(started, end.codes)
            port = self._next_port()
            if port is None:
                self.phase = Phase.FAILED
                message = (f"port {self.plan.port} is still in use {PORT_WAIT:g}s after attempt {self.attempt} "
                           f"ended; attempt {self.attempt + 1} cannot start")
                self.say(self._summary(started, message))
                return self._end(str(self.phase), 1, message)
            self.attempt, self.restarts = self.attempt + 1, verdict.restarts
            self.plan = with_attempt(self.plan, self.attempt, port, self.plan.port_source)
            self.say(f"attempt {self.attempt} of job {p.job.name}: rendezvous {self.plan.master_addr}:{port} "
                     f"({self.plan.port_source})")
            with self.lock:
                for log in self._logs.values():
                    log.write(f"razor: attempt {self.attempt} of job {p.job.name}\n")

    def _wait_for_master(self) -> str | None:
        """Wait until the master's rendezvous port (node 0's torchrun) accepts a connection, at
        most ``spec.masterAddrTimeoutSeconds``. None once it answers (or on a stop); else why not,
        in words for the summary. A bare connect is harmless to torch's rendezvous store."""
        addr, port = self.plan.master_addr, self.plan.port
        timeout = float(self.plan.job.spec.master_addr_timeout_seconds)
        start = time.monotonic()
        said = None
        error = "no answer"
        while not self.stop_reason:
            try:
                with socket.create_connection((addr, port), timeout=min(5.0, max(0.5, timeout))):
                    if said is not None:
                        self.say(f"the master {addr}:{port} answers")
                    return None
            except OSError as exc:
                error = exc.strerror or str(exc) or type(exc).__name__
            waited = time.monotonic() - start
            if waited >= timeout:
                return (f"the master {addr}:{port} (node 0) did not answer within {timeout:g}s "
                        f"(spec.masterAddrTimeoutSeconds): {error}; start node 0 first (razorctl submit --local "
                        f"--node-rank 0 on the machine at {addr}), and open port {port} there to this machine")
            if said is None or time.monotonic() - said >= MASTER_NOTE_EVERY:
                self.say(f"waiting for the master {addr}:{port} (node 0) to answer ({waited:.0f}s of "
                         f"{timeout:g}s, spec.masterAddrTimeoutSeconds)")
                said = time.monotonic()
            time.sleep(0.5)
        return None

    def _run_attempt(self) -> AttemptEnd:
        self.procs, self._exits = [], {}
        ranks = [node.rank for node in self.plan.nodes]
        threads = []
        try:
            for node in self.plan.nodes:
                proc = subprocess.Popen(
                    node.argv, cwd=self.plan.cwd, env={**os.environ, **node.env}, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
                self.procs.append(proc)
            self.phase = Phase.RUNNING
            self._note()
            for rank, proc in zip(ranks, self.procs):
                for target, args in ((self._pump, (rank, proc.stdout)), (self._reap, (rank, proc))):
                    t = threading.Thread(target=target, args=args, daemon=True)
                    t.start()
                    threads.append(t)
            stop_asked = self._wait()
        finally:
            self._kill()  # whatever is left of every node's process group
            for t in threads:
                t.join(timeout=5)
        with self.lock:
            exits = dict(self._exits)
        now = time.time()
        codes = [exits.get(r, (137, now))[0] for r in ranks]
        ended = [exits.get(r, (137, now))[1] for r in ranks]
        return AttemptEnd(ranks, codes, ended, stop_asked)

    def _wait(self) -> float | None:
        """Wait until every node has exited; stop the gang when one fails. Returns when razor
        asked the gang to stop (after a failure, or the user's stop), None if it never did."""
        failed_at: float | None = None
        stop_at: float | None = None
        asked: float | None = None
        killed = False
        while True:
            with self.lock:
                exits = dict(self._exits)
            if len(exits) == len(self.procs):
                return asked
            bad = sorted((when, r, c) for r, (c, when) in exits.items() if c != 0)
            if bad and failed_at is None and self.stop_reason is None:
                _, rank, code = bad[0]
                failed_at = time.monotonic()
                asked = asked or time.time()
                self.say(f"node {rank} exited with code {code}; stopping the other nodes")
                self._terminate()
            if self.stop_reason and stop_at is None:
                stop_at = time.monotonic()
                asked = asked or time.time()
            if failed_at and time.monotonic() - failed_at > min(self.grace, FAILURE_GRACE):
                self._kill()
            if stop_at and time.monotonic() - stop_at > self.grace:
                if not killed:
                    self.say(f"nodes still running {self.grace:g}s after the stop "
                             "(spec.terminationGracePeriodSeconds); killing them")
                    killed = True
                self._kill()
            time.sleep(0.05)

    def _node_messages(self) -> dict[int, str]:
        """Each node's own account of its failure in this attempt (razor.node's node-<rank>.json:
        the failed rank's exception and the end of its traceback, or a stall), by node rank."""
        out = {}
        for rank, doc in read_node_ends(self.plan.work_dir).items():
            if doc.get("attempt") == self.attempt and doc.get("message") and doc.get("exitCode") != 0:
                out[rank] = str(doc["message"])
        return out

    def _outcomes(self, end: AttemptEnd) -> list[RankOutcome]:
        """The ranks that failed on their own: before razor asked the gang to stop. Those that
        exited after it were stopped by razor (their exit 75 is no disruption); an exit 75 before
        it came from a stop signal razor did not send (a disruption). Each carries its node's
        message, when razor.node left one."""
        messages = self._node_messages()
        out = []
        for rank, code, when in zip(end.ranks, end.codes, end.ended):
            if code == 0 or (end.stop_asked is not None and when > end.stop_asked):
                continue
            detail = ("stopped by a signal razor did not send (checkpoint saved)" if code == EXIT_PREEMPTED
                      else _detail(rank, code, messages.get(rank)))
            reason = _signal_name(code)
            out.append(RankOutcome(rank, code, reason, datetime.fromtimestamp(when, timezone.utc), detail=detail))
        if not out:  # every failure came after the stop (cannot happen without one): the first by time
            i = min((i for i, c in enumerate(end.codes) if c != 0), key=lambda i: end.ended[i])
            rank = end.ranks[i]
            out.append(RankOutcome(rank, end.codes[i], _signal_name(end.codes[i]),
                                   datetime.fromtimestamp(end.ended[i], timezone.utc),
                                   detail=_detail(rank, end.codes[i], messages.get(rank))))
        return out

    def _wait_until(self, deadline: float) -> None:
        while not self.stop_reason and time.time() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.time())))

    def _next_port(self) -> int | None:
        """The next attempt's port: a new free one for port: auto, else the same, once it is free."""
        if self.plan.port_source == "auto":
            return free_port()
        deadline = time.monotonic() + PORT_WAIT
        while not port_free(self.plan.port):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        return self.plan.port

    def _counts(self) -> str:
        r = self.restarts
        return f"attempt {self.attempt}, restarts: {r.total} (counted {r.counted}, disruptions {r.disruptions})"

    def _who(self) -> str:
        p = self.plan
        return f"job {p.job.name} node {p.node_rank}" if p.one_node else f"job {p.job.name}"

    def _summary(self, started: float, then: str) -> str:
        """``job NAME Succeeded in 12.3s, attempt 2, restarts: 1 (counted 1, disruptions 0); ...``:
        the phase and the restart counters in the words of every backend (razorctl status)."""
        took = time.monotonic() - started
        sep = "; " if self.phase is Phase.SUCCEEDED else ": "
        return f"{self._who()} {self.phase} in {took:.1f}s, {self._counts()}{sep}{then}"

    def _stopped(self, started: float, codes: list[int]) -> int:
        took = time.monotonic() - started
        message = f"stopped ({self.stop_reason}); submit it again to resume from its last checkpoint"
        self.say(f"{self._who()} stopped ({self.stop_reason}) after {took:.1f}s, {self._counts()}; "
                 "submit it again to resume from its last checkpoint")
        code = EXIT_PREEMPTED if all(c in (0, EXIT_PREEMPTED) for c in codes) else 130
        return self._end(STOPPED, code, message)


def _detail(rank: int, code: int, message: str | None) -> str | None:
    """A node's message as the detail of its outcome, without the words the outcome says itself
    (``rank 1 exited with code 3``: with one process per node, the node's and the worker's)."""
    head = f"rank {rank} exited with code {code}"
    if message and message.startswith(head):
        message = message[len(head):].lstrip(": ").strip()
    return message or None


def _signal_name(code: int) -> str | None:
    """``SIGKILL`` for 137: how a node that a signal ended is named (None for other codes)."""
    if 128 < code < 128 + 65:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None
