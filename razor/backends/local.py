"""The local backend: every node of a RazorJob as a process on this machine, or one node of it.

``plan`` and ``render`` are pure; ``check``, ``choose_port``, ``Supervisor`` and the job records
(``JobRecord``) do the I/O; ``LocalBackend`` is razorctl's ``--local`` (razor.backends.Backend).
Each node is ``python -m razor.node ...`` with its own NODE_RANK, all meeting at
127.0.0.1:PORT; with ``--node-rank N --master-addr HOST`` only node N runs here, and meets the
others (the same command on their machines) at HOST:PORT. The supervisor streams each node's output prefixed by its rank, stops the
whole gang when one node fails (no rank is left hanging in a collective), and applies the job's
failure policy as every backend does (razor.policy): the whole gang starts again as the next
attempt (RAZOR_ATTEMPT + 1; the trainer resumes from its checkpoint) after the backoff, counted
against ``backoffLimit`` or not, or the job fails. Ctrl-C is passed on as a checkpoint-and-stop
(the nodes get the job's terminationGracePeriodSeconds, as a pod would, then are killed) and is
never followed by a restart. razorctl exits with the job's outcome.

One node of a gang (``--node-rank``) is supervised the same way, except that it is never
restarted: nothing coordinates the machines, and a node that started again alone would wait at
the rendezvous for peers that have ended. It ends with its exit code and the failure's message;
the same commands run again resume the job from its last checkpoint.

While it runs, the supervisor keeps a record of the job under a per-user state dir
(:func:`state_dir`) and copies each node's output to ``<work_dir>/razor-status/logs/``, so that
``razorctl status|logs|cancel|wait|list --local`` find it from another terminal.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shlex
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

from ..config import ConfigError, apply_options, load_config
from ..launcher import EXIT_PREEMPTED, Network, NodeLaunch, PortChoice, job_port, node_launches, run_vars
from ..node import kill_tree, port_free
from ..policy import Action, Phase, Policy, RankOutcome, Restarts, on_failure
from ..progress import (STATUS_DIR, duration, line as progress_line, parse_rfc3339, read_json, read_node_ends,
                        read_progress, rfc3339, write_json)
from ..spec import FieldError, RazorJob, SpecError
from . import Backend, Refused

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


# ----------------------------------------------------------------------------- checks (I/O)


def check(job: RazorJob, cwd: Path, source: str = "RazorJob") -> dict[str, Any] | None:
    """What only this machine can tell: the config or script exists, cfgOptions fit the config.

    Returns the loaded config (None for a user's script); raises SpecError naming the field.
    """
    spec = job.spec
    errors: list[FieldError] = []
    config = None
    if spec.script:
        if not (cwd / spec.script).is_file():
            errors.append(FieldError("spec.script", f"{spec.script!r} not found (relative to {cwd})"))
    if spec.config:
        path = cwd / spec.config
        if not path.is_file():
            errors.append(FieldError("spec.config", f"{spec.config!r} not found (relative to {cwd})"))
        else:
            try:
                config = load_config(path)
            except ConfigError as exc:
                errors.append(FieldError("spec.config", str(exc)))
            else:
                if not spec.script:
                    try:
                        apply_options(config, spec.cfg_options)
                    except ConfigError as exc:
                        errors.append(FieldError("spec.cfgOptions", str(exc).removeprefix("--cfg-options ")))
    if spec.resume not in ("auto", "never") and not (cwd / spec.resume).is_file():
        errors.append(FieldError("spec.resume", f"checkpoint {spec.resume!r} not found (relative to {cwd})"))
    if errors:
        raise SpecError(source, errors)
    return config


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("0.0.0.0", 0))
            port = sock.getsockname()[1]
        if port_free(port):
            return port
    raise PortInUse("could not find a free port")


def port_choice(job: RazorJob, config: dict[str, Any] | None) -> PortChoice:
    """The one port rule (razor.launcher.job_port) on this machine: the port the job fixes, else
    29500, else (``port: auto``) None: a free one is picked as the job starts."""
    return job_port(job, config, Network.MACHINE)


def choose_port(job: RazorJob, config: dict[str, Any] | None) -> tuple[int, str]:
    """The port to start with, checked free, and how it was chosen: fixed or auto."""
    choice = port_choice(job, config)
    if choice.port is None:
        return free_port(), "auto"
    if not port_free(choice.port):
        raise PortInUse(
            f"{choice.field}: port {choice.port} on this machine is in use (another job, or a process still "
            f"holding it); set port: auto to let razor pick a free one, or choose another port"
        )
    return choice.port, "fixed"


# ----------------------------------------------------------------------------- plan (pure)


def plan(job: RazorJob, cwd: Path, port: int, port_source: str = "fixed",
         python: str = sys.executable, cpus: int | None = None, node_rank: int | None = None,
         master_addr: str | None = None) -> LocalPlan:
    """Every node of ``job`` on this machine, or with ``node_rank`` that node alone, its peers
    reaching the master at ``master_addr`` (127.0.0.1 when not given: node 0 on this machine)."""
    addr = master_addr or MASTER_ADDR
    nodes = node_launches(job, addr, port, python=python)
    if node_rank is not None:
        nodes = [n for n in nodes if n.rank == node_rank]
    procs = len(nodes) * (job.spec.nproc_per_node or 1)
    threads = str(max(1, (cpus or os.cpu_count() or 1) // procs))
    if "OMP_NUM_THREADS" not in job.spec.env:
        # The nodes here share this machine's cores: do not oversubscribe them.
        nodes = [NodeLaunch(n.rank, {**n.env, "OMP_NUM_THREADS": threads}, n.argv) for n in nodes]
    return LocalPlan(job, port, port_source, cwd, nodes, addr, node_rank)


def describe(p: LocalPlan) -> str:
    spec = p.job.spec
    device = f"{spec.gpus_per_node} GPU(s) per node, nccl" if spec.gpus_per_node else "CPU, gloo"
    procs = spec.nproc_per_node
    size = (f"node {p.node_rank} of {spec.nnodes}" if p.one_node else f"{spec.nnodes} node(s)")
    return (f"job {p.job.name}: {size} x {procs} process(es) ({device}), "
            f"rendezvous {p.master_addr}:{p.port} ({p.port_source}), work dir {spec.work_dir}")


def render(p: LocalPlan, fmt: str = "text") -> str:
    """Exactly what ``submit --local`` runs: a shell script, or the plan as JSON/YAML."""
    if fmt in ("json", "yaml"):
        doc = {
            "job": p.job.name, "port": p.port, "portSource": p.port_source, "cwd": str(p.cwd),
            **({"nodeRank": p.node_rank, "masterAddr": p.master_addr} if p.one_node else {}),
            "nodes": [{"rank": n.rank, "env": n.env, "command": n.argv} for n in p.nodes],
        }
        if fmt == "json":
            return json.dumps(doc, indent=2) + "\n"
        import yaml

        return yaml.safe_dump(doc, sort_keys=False)
    lines = ["#!/bin/sh", f"# razorctl submit --local: {describe(p)}",
             f"cd {shlex.quote(str(p.cwd))}"]
    if p.port_source == "auto":
        lines.append(f"# port: auto -> {p.port} is free now; submit picks a free port when it starts")
    for node in p.nodes:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in node.env.items())
        lines.append(f"# node {node.rank}")
        lines.append(f"env {env} \\\n  {shlex.join(node.argv)} &")
    lines.append("wait")
    return "\n".join(lines) + "\n"


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
#: The phase shown for a job whose supervisor is gone without recording its end (killed).
UNKNOWN = "Unknown"


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


# ----------------------------------------------------------------------------- job records (I/O)


def state_dir(environ: dict[str, str] | None = None) -> Path:
    """Where the supervisors of this user's local jobs keep their records:
    ``$XDG_STATE_HOME/razor/local``, by default ``~/.local/state/razor/local``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "razor" / "local"


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None when there is no such process
    (or a zombie): with the pid it names one process, not a later one that got the same pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


class JobRecord:
    """What razorctl status --local knows of one supervisor: a JSON file in :func:`state_dir`,
    ``<name>.json`` (every node here) or ``<name>.node<N>.json`` (one node, ``--node-rank N``).

    ``{"name", "nodeRank", "nodes", "nnodes", "pid", "pidStart", "cwd", "workDir", "masterAddr",
    "port", "grace", "started", "phase", "attempt", "restarts", "end"}``; ``end`` is None while it
    runs, then ``{"phase", "exitCode", "message", "finishedAt"}``. A record without an end whose
    process is gone belongs to a supervisor that was killed: its phase is shown as Unknown."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path, self.doc = path, doc

    @staticmethod
    def path_for(name: str, node_rank: int | None, folder: Path | None = None) -> Path:
        folder = state_dir() if folder is None else folder
        return folder / (f"{name}.json" if node_rank is None else f"{name}.node{node_rank}.json")

    @classmethod
    def load(cls, path: Path) -> JobRecord | None:
        doc = read_json(path)
        return cls(path, doc) if isinstance(doc, dict) and isinstance(doc.get("name"), str) else None

    @classmethod
    def all(cls, folder: Path | None = None) -> list[JobRecord]:
        folder = state_dir() if folder is None else folder
        try:
            paths = sorted(folder.glob("*.json"))
        except OSError:
            return []
        return [r for r in (cls.load(p) for p in paths) if r is not None]

    @classmethod
    def claim(cls, p: LocalPlan, grace: float) -> JobRecord:
        """Register a supervisor that is about to run plan ``p``; Refused when the same job (the
        same node) is still running here: two runs of one job would write one work dir."""
        path = cls.path_for(p.job.name, p.node_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = cls.load(path)
            if old is not None and old.running:
                which = f"node {p.node_rank} of job" if p.one_node else "job"
                raise Refused(f"{which} {p.job.name} is already running on this machine (razorctl pid {old.pid}, "
                              f"started {old.doc.get('started')}, work dir {old.doc.get('workDir')}): see razorctl "
                              f"status --local {p.job.name}; cancel it first, or give this job another name")
            pid = os.getpid()
            record = cls(path, {
                "name": p.job.name, "nodeRank": p.node_rank, "nodes": [n.rank for n in p.nodes],
                "nnodes": p.job.spec.nnodes, "pid": pid, "pidStart": _start_ticks(pid), "cwd": str(p.cwd),
                "workDir": str(p.work_dir), "masterAddr": p.master_addr, "port": p.port, "grace": grace,
                "started": rfc3339(time.time()), "phase": str(Phase.PENDING), "attempt": 1,
                "restarts": Restarts().to_status(), "end": None,
            })
            record.save()
        return record

    def save(self) -> None:
        try:
            write_json(self.path, self.doc)
        except OSError:  # the record is for status; the job itself goes on without it
            pass

    def update(self, **fields: Any) -> None:
        self.doc.update(fields)
        self.save()

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def pid(self) -> int:
        return int(self.doc.get("pid") or 0)

    @property
    def node_rank(self) -> int | None:
        return self.doc.get("nodeRank")

    @property
    def nodes(self) -> list[int]:
        return list(self.doc.get("nodes") or [])

    @property
    def work_dir(self) -> Path:
        return Path(self.doc.get("workDir") or ".")

    @property
    def end(self) -> dict[str, Any] | None:
        end = self.doc.get("end")
        return end if isinstance(end, dict) else None

    @property
    def alive(self) -> bool:
        """Whether its supervisor (razorctl) still runs."""
        start = _start_ticks(self.pid) if self.pid > 0 else None
        return start is not None and (self.doc.get("pidStart") in (None, start))

    @property
    def running(self) -> bool:
        return self.end is None and self.alive

    @property
    def phase(self) -> str:
        if self.end is not None:
            return str(self.end.get("phase"))
        return str(self.doc.get("phase")) if self.alive else UNKNOWN

    @property
    def message(self) -> str | None:
        if self.end is not None:
            return self.end.get("message")
        if not self.alive:
            return (f"its supervisor (razorctl pid {self.pid}) is gone without recording how the job ended "
                    "(killed?); the work dir keeps its checkpoints: submit it again to resume")
        return None

    def who(self) -> str:
        rank = self.node_rank
        return f"job {self.name}" if rank is None else f"job {self.name} node {rank} of {self.doc.get('nnodes')}"

    def node_failures(self) -> dict[int, dict[str, Any]]:
        """The end records (razor.node's node-<rank>.json) of this run's nodes that failed, by rank."""
        try:
            since = parse_rfc3339(str(self.doc.get("started")))
        except ValueError:
            since = 0.0
        out = {}
        for rank, doc in read_node_ends(self.work_dir).items():
            try:
                when = parse_rfc3339(str(doc.get("finishedAt")))
            except ValueError:
                continue
            if rank in self.nodes and when >= since - 1 and doc.get("exitCode") not in (0, None):
                out[rank] = doc
        return out

    def progress(self):
        return read_progress(self.work_dir)

    def to_status(self) -> dict[str, Any]:
        """The record as ``razorctl status --local -o json`` shows it."""
        p = self.progress()
        doc = {
            "name": self.name, "phase": self.phase, "nodeRank": self.node_rank, "nodes": self.nodes,
            "nnodes": self.doc.get("nnodes"), "attempt": self.doc.get("attempt"),
            "restarts": self.doc.get("restarts"), "pid": self.pid, "running": self.running,
            "cwd": self.doc.get("cwd"), "workDir": self.doc.get("workDir"),
            "rendezvous": f"{self.doc.get('masterAddr')}:{self.doc.get('port')}", "started": self.doc.get("started"),
            "finished": (self.end or {}).get("finishedAt"), "exitCode": (self.end or {}).get("exitCode"),
            "message": self.message,
            "nodeFailures": [{"nodeRank": r, "exitCode": d.get("exitCode"), "attempt": d.get("attempt"),
                              "message": d.get("message")} for r, d in sorted(self.node_failures().items())],
        }
        if p is not None:
            doc["progress"] = p.to_status()
        return doc

    def describe(self, tty: bool = False, now: float | None = None) -> str:
        """What ``razorctl status --local NAME`` prints for this record."""
        now = time.time() if now is None else now
        r = self.doc.get("restarts") or {}
        lines = [f"{self.who()}: {self.phase}, attempt {self.doc.get('attempt')}, restarts: {r.get('total', 0)} "
                 f"(counted {r.get('counted', 0)}, disruptions {r.get('disruptions', 0)})"]
        try:
            ago = f" ({duration(now - parse_rfc3339(str(self.doc.get('started'))))} ago)"
        except ValueError:
            ago = ""
        state = "running" if self.alive else "ended"
        lines.append(f"  supervisor: razorctl pid {self.pid} ({state}), started {self.doc.get('started')}{ago}, "
                     f"in {self.doc.get('cwd')}")
        lines.append(f"  work dir:   {self.work_dir}")
        lines.append(f"  rendezvous: {self.doc.get('masterAddr')}:{self.doc.get('port')}")
        p = self.progress()
        if p is None and self.node_rank not in (None, 0):
            shown = "node 0 reports it (razorctl status --local on its machine, or its work dir)"
        else:
            shown = progress_line(p, tty, now)
        lines.append(f"  progress:   {shown}")
        if self.end is not None:
            lines.append(f"  exit code:  {self.end.get('exitCode')}")
        for rank, doc in sorted(self.node_failures().items()):
            text = str(doc.get("message") or "").strip()
            head = f"  node {rank}: exit code {doc.get('exitCode')} (attempt {doc.get('attempt')})"
            lines.append(head + (":" if text else ""))
            lines += [f"    {line}" for line in text.splitlines()]
        if self.message:
            lines.append(f"  message:    {self.message}")
        return "\n".join(lines)

    def log_file(self, rank: int) -> Path:
        return self.work_dir / STATUS_DIR / "logs" / f"node-{rank}.log"


def submit(job: RazorJob, cwd: Path, source: str = "RazorJob", out: IO[str] | None = None,
           node_rank: int | None = None, master_addr: str | None = None) -> int:
    """``razorctl submit --local``: check, choose the port, register, supervise. With
    ``node_rank``, only that node runs here (its master at ``master_addr``)."""
    config = check(job, cwd, source)
    port, how = node_port(job, config, node_rank)
    p = plan(job, cwd, port, how, node_rank=node_rank, master_addr=master_addr)
    supervisor = Supervisor(p, out)
    supervisor.record = JobRecord.claim(p, supervisor.grace)
    return supervisor.run()


def check_node_rank(job: RazorJob, node_rank: int | None) -> None:
    """``--node-rank`` names a node of the job: 0 to nnodes - 1 (Refused otherwise, exit 2)."""
    if node_rank is not None and not 0 <= node_rank < job.spec.nnodes:
        raise Refused(f"--node-rank {node_rank}: job {job.name} has {job.spec.nnodes} node(s) (spec.nnodes), "
                      f"ranked 0 to {job.spec.nnodes - 1}")


def node_port(job: RazorJob, config: dict[str, Any] | None, node_rank: int | None,
              check_free: bool = True) -> tuple[int, str]:
    """The port of a run here: the one port rule, checked free where this machine listens on it
    (every node here, or node 0). Every machine of a job split with ``--node-rank`` must know the
    port before it starts, so ``port: auto`` cannot be used there."""
    check_node_rank(job, node_rank)
    if node_rank is None:
        return choose_port(job, config) if check_free else _unchecked_port(job, config)
    choice = port_choice(job, config)
    if choice.port is None and job.spec.nnodes > 1:
        raise Refused(f"spec.port: port: auto cannot be used with --node-rank: every machine must know the "
                      f"rendezvous port before it starts; fix it (spec.port: {29500}, say) and open it on the "
                      "machine of node 0")
    if node_rank == 0 and check_free:
        return choose_port(job, config)
    return _unchecked_port(job, config)


def _unchecked_port(job: RazorJob, config: dict[str, Any] | None) -> tuple[int, str]:
    choice = port_choice(job, config)
    return (free_port(), "auto") if choice.port is None else (choice.port, "fixed")


class LocalBackend(Backend):
    """``--local``: every node a process on this machine (or one node of it, ``--node-rank``),
    supervised by razorctl in the foreground; ``status``, ``logs``, ``cancel``, ``wait`` and
    ``list`` find the jobs that run here by their records (:class:`JobRecord`)."""

    name = "local"

    def __init__(self, cwd: Path | None = None, out: IO[str] | None = None, err: IO[str] | None = None,
                 node_rank: int | None = None, master_addr: str | None = None, **options: object):
        super().__init__(cwd, out, err, **options)
        self.node_rank, self.master_addr = node_rank, master_addr

    def render(self, job: RazorJob, source: str, fmt: str = "text") -> str:
        config = check(job, self.cwd, source)
        port, how = node_port(job, config, self.node_rank, check_free=False)
        return render(plan(job, self.cwd, port, how, node_rank=self.node_rank, master_addr=self.master_addr), fmt)

    def submit(self, job: RazorJob, source: str) -> int:
        return submit(job, self.cwd, source, self.out, self.node_rank, self.master_addr)

    # ---- the jobs that run (or ran) here

    def _records(self, ref: str) -> list[JobRecord]:
        """The records of job ``ref`` on this machine (one per supervisor: the job, or each of its
        nodes started here with --node-rank); Refused naming the jobs there are, when none."""
        records = [r for r in JobRecord.all() if r.name == ref]
        if not records:
            known = sorted({r.name for r in JobRecord.all()})
            there = f"the jobs here: {', '.join(known)}" if known else "no job has run here"
            raise Refused(f"no local job {ref!r} (razorctl submit --local runs one; {there}; records in "
                          f"{state_dir()})")
        return sorted(records, key=lambda r: (r.node_rank is not None, r.node_rank or 0))

    def status(self, ref: str, fmt: str = "text") -> int:
        records = self._records(ref)
        if fmt in ("json", "yaml"):
            docs = [r.to_status() for r in records]
            doc: Any = docs[0] if len(docs) == 1 else {"name": ref, "supervisors": docs}
            if fmt == "json":
                self.say(json.dumps(doc, indent=2))
            else:
                import yaml

                self.out.write(yaml.safe_dump(doc, sort_keys=False))
            return 0
        tty = self.out.isatty()
        self.say("\n".join(r.describe(tty) for r in records))
        return 0

    def list(self, all_namespaces: bool = False, fmt: str = "text") -> int:
        records = sorted(JobRecord.all(), key=lambda r: (r.name, r.node_rank or 0))
        if fmt in ("json", "yaml"):
            docs = [r.to_status() for r in records]
            if fmt == "json":
                self.say(json.dumps(docs, indent=2))
            else:
                import yaml

                self.out.write(yaml.safe_dump(docs, sort_keys=False))
            return 0
        rows = [("NAME", "NODES", "PHASE", "ATTEMPT", "PROGRESS", "AGE", "PID", "WORK DIR")]
        now = time.time()
        for r in records:
            p = r.progress()
            percent = f"{int(p.percent)}%" if p is not None and p.percent is not None else "-"
            try:
                age = duration(now - parse_rfc3339(str(r.doc.get("started"))))
            except ValueError:
                age = "?"
            nodes = ",".join(map(str, r.nodes)) + f"/{r.doc.get('nnodes')}"
            rows.append((r.name, nodes, r.phase, str(r.doc.get("attempt")), percent, age, str(r.pid),
                         str(r.work_dir)))
        if len(rows) == 1:
            self.note(f"no local jobs (records in {state_dir()})")
            return 0
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            self.say("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        return 0

    def logs(self, ref: str, rank: int | None, follow: bool) -> int:
        records = self._records(ref)
        if rank is None:
            record = records[0]
            rank = record.nodes[0] if record.nodes else 0
        else:
            found = [r for r in records if rank in r.nodes]
            if not found:
                ranks = sorted({n for r in records for n in r.nodes})
                raise Refused(f"job {ref} has no node {rank} on this machine (its nodes here: "
                              f"{', '.join(map(str, ranks))})")
            record = found[0]
        path = record.log_file(rank)
        pos = 0
        while True:
            ended = not record.running  # read before the file: what it wrote last is then in it
            try:
                with path.open(errors="replace") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                    pos = fh.tell()
            except FileNotFoundError:
                if not follow or ended:
                    raise Refused(f"no log of node {rank} of job {ref} at {path}") from None
                chunk = ""
            if chunk:
                self.out.write(chunk)
                self.out.flush()
            if not follow or ended:
                return 0
            time.sleep(0.5)
            record = JobRecord.load(record.path) or record

    def cancel(self, ref: str) -> int:
        records = self._records(ref)
        running = [r for r in records if r.running]
        for r in records:
            if not r.running:
                self.say(f"{r.who()} is not running ({r.phase})")
        for r in running:
            try:
                os.kill(r.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            self.say(f"{r.who()}: asked to stop (SIGTERM to razorctl pid {r.pid}): its nodes save a checkpoint "
                     f"and stop, within {float(r.doc.get('grace') or 0):g}s")
        code = 0
        for r in running:
            deadline = time.monotonic() + float(r.doc.get("grace") or DEFAULT_GRACE) + 30
            while time.monotonic() < deadline:
                r = JobRecord.load(r.path) or r
                if not r.running:
                    break
                time.sleep(0.2)
            if r.running:
                self.say(f"{r.who()} is still stopping (razorctl pid {r.pid})")
                code = 1
            else:
                self.say(f"{r.who()} {r.phase}" + (f" (exit code {r.end['exitCode']})" if r.end else "")
                         + (f": {r.message}" if r.message else ""))
        return code

    def wait(self, ref: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            records = self._records(ref)
            if not any(r.running for r in records):
                break
            if time.monotonic() > deadline:
                for r in records:
                    self.say(f"{r.who()}: {r.phase} after waiting {timeout:g}s")
                return 1
            time.sleep(0.5)
        for r in records:
            code = f" (exit code {r.end['exitCode']})" if r.end else ""
            self.say(f"{r.who()}: {r.phase}{code}" + (f": {r.message}" if r.message else ""))
        return 0 if all(r.phase == str(Phase.SUCCEEDED) for r in records) else 1


#: A record's grace when it has none (records of another version).
DEFAULT_GRACE = 120.0
