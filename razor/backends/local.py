"""The local backend: every node of a RazorJob as a process on this machine.

``plan`` and ``render`` are pure; ``check``, ``choose_port`` and ``Supervisor`` do the I/O;
``LocalBackend`` is razorctl's ``--local`` (razor.backends.Backend).
Each node is ``python -m razor.node ...`` with its own NODE_RANK, all meeting at
127.0.0.1:PORT. The supervisor streams each node's output prefixed by its rank, stops the
whole gang when one node fails (no rank is left hanging in a collective), and applies the job's
failure policy as every backend does (razor.policy): the whole gang starts again as the next
attempt (RAZOR_ATTEMPT + 1; the trainer resumes from its checkpoint) after the backoff, counted
against ``backoffLimit`` or not, or the job fails. Ctrl-C is passed on as a checkpoint-and-stop
(the nodes get the job's terminationGracePeriodSeconds, as a pod would, then are killed) and is
never followed by a restart. razorctl exits with the job's outcome.
"""

from __future__ import annotations

import ctypes
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
from ..spec import FieldError, RazorJob, SpecError
from . import Backend, Refused, Unsupported

MASTER_ADDR = "127.0.0.1"


class PortInUse(Refused):
    pass


@dataclass(frozen=True)
class LocalPlan:
    job: RazorJob
    port: int
    port_source: str
    cwd: Path
    nodes: list[NodeLaunch]


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
         python: str = sys.executable, cpus: int | None = None) -> LocalPlan:
    nodes = node_launches(job, MASTER_ADDR, port, python=python)
    procs = job.spec.nnodes * (job.spec.nproc_per_node or 1)
    threads = str(max(1, (cpus or os.cpu_count() or 1) // procs))
    if "OMP_NUM_THREADS" not in job.spec.env:
        # All nodes share this machine's cores: do not oversubscribe them.
        nodes = [NodeLaunch(n.rank, {**n.env, "OMP_NUM_THREADS": threads}, n.argv) for n in nodes]
    return LocalPlan(job, port, port_source, cwd, nodes)


def describe(p: LocalPlan) -> str:
    spec = p.job.spec
    device = f"{spec.gpus_per_node} GPU(s) per node, nccl" if spec.gpus_per_node else "CPU, gloo"
    procs = spec.nproc_per_node
    return (f"job {p.job.name}: {spec.nnodes} node(s) x {procs} process(es) ({device}), "
            f"rendezvous {MASTER_ADDR}:{p.port} ({p.port_source}), work dir {spec.work_dir}")


def render(p: LocalPlan, fmt: str = "text") -> str:
    """Exactly what ``submit --local`` runs: a shell script, or the plan as JSON/YAML."""
    if fmt in ("json", "yaml"):
        doc = {
            "job": p.job.name, "port": p.port, "portSource": p.port_source, "cwd": str(p.cwd),
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
    """How one attempt ended: each node's exit code (a signal as 128 + its number) and when it
    exited (``time.time()``), and when razor asked the gang to stop (None: it never did)."""

    codes: list[int]
    ended: list[float]
    stop_asked: float | None


def with_attempt(p: LocalPlan, attempt: int, port: int, port_source: str) -> LocalPlan:
    """The same plan for another attempt: each node's RAZOR_ATTEMPT and port, its command kept."""
    run = {**{name: str(attempt) for name in run_vars("attempt")},
           **{name: str(port) for name in run_vars("master_port")}}
    nodes = [NodeLaunch(n.rank, {**n.env, **{k: v for k, v in run.items() if k in n.env}}, n.argv)
             for n in p.nodes]
    return LocalPlan(p.job, port, port_source, p.cwd, nodes)


class Supervisor:
    """Runs a plan's nodes as a gang, with the job's failure policy (razor.policy): when a node
    fails, the others are stopped, and the whole gang is started again as the next attempt (or
    the job fails) as ``razor.policy.on_failure`` decides, after its backoff.

    After a stop (Ctrl-C, SIGTERM to razorctl) each node has ``grace`` seconds to save a
    checkpoint and exit, the job's ``terminationGracePeriodSeconds`` unless given: razor.node stops
    its training within it (RAZOR_STOP_GRACE), and what is left is killed after it. A stop is
    never followed by a restart."""

    def __init__(self, p: LocalPlan, out: IO[str] | None = None, grace: float | None = None):
        self.plan, self.out = p, out or sys.stdout
        self.grace = float(p.job.spec.termination_grace_period_seconds if grace is None else grace)
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stop_reason: str | None = None
        self.policy = Policy.from_spec(p.job.spec)
        self.restarts = Restarts()
        self.attempt = 1
        self.phase = Phase.PENDING
        self._exits: dict[int, tuple[int, float]] = {}  # rank: (exit code, when), this attempt

    def say(self, msg: str) -> None:
        with self.lock:
            self.out.write(f"razor: {msg}\n")
            self.out.flush()

    def _pump(self, rank: int, stream: IO[bytes]) -> None:
        prefix = f"[node{rank}] " if len(self.plan.nodes) > 1 else ""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self.lock:
                self.out.write(f"{prefix}{line}\n")
                self.out.flush()
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

    def run(self) -> int:
        p = self.plan
        Path(p.cwd / p.job.spec.work_dir).mkdir(parents=True, exist_ok=True)
        self.say(describe(p))
        handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            while True:
                end = self._run_attempt()
                if all(c == 0 for c in end.codes):
                    self.phase = Phase.SUCCEEDED
                    self.say(self._summary(started, f"work dir {p.job.spec.work_dir}"))
                    return 0
                if self.stop_reason:
                    return self._stopped(started, end.codes)
                verdict = on_failure(self.policy, self._outcomes(end), self.restarts, self.attempt,
                                     len(self.plan.nodes))
                if verdict.action is Action.FAIL:
                    self.phase = Phase.FAILED
                    self.say(self._summary(started, verdict.message))
                    return verdict.culprit.exit_code or 1
                self.phase = Phase.RESTARTING
                self.say(verdict.message)
                culprit_ended = verdict.culprit.finished.timestamp() if verdict.culprit.finished else time.time()
                self._wait_until(culprit_ended + verdict.delay)  # the backoff counts from the failure
                if self.stop_reason:
                    return self._stopped(started, end.codes)
                port = self._next_port()
                if port is None:
                    self.phase = Phase.FAILED
                    self.say(self._summary(started, f"port {self.plan.port} is still in use {PORT_WAIT:g}s after "
                                                    f"attempt {self.attempt} ended; attempt {self.attempt + 1} "
                                                    "cannot start"))
                    return 1
                self.attempt, self.restarts = self.attempt + 1, verdict.restarts
                self.plan = with_attempt(self.plan, self.attempt, port, self.plan.port_source)
                self.say(f"attempt {self.attempt} of job {p.job.name}: rendezvous {MASTER_ADDR}:{port} "
                         f"({self.plan.port_source})")
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)

    def _run_attempt(self) -> AttemptEnd:
        self.procs, self._exits = [], {}
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
            for rank, proc in enumerate(self.procs):
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
        codes = [exits.get(r, (137, time.time()))[0] for r in range(len(self.procs))]
        ended = [exits.get(r, (137, time.time()))[1] for r in range(len(self.procs))]
        return AttemptEnd(codes, ended, stop_asked)

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

    def _outcomes(self, end: AttemptEnd) -> list[RankOutcome]:
        """The ranks that failed on their own: before razor asked the gang to stop. Those that
        exited after it were stopped by razor (their exit 75 is no disruption); an exit 75 before
        it came from a stop signal razor did not send (a disruption)."""
        out = []
        for rank, (code, when) in enumerate(zip(end.codes, end.ended)):
            if code == 0 or (end.stop_asked is not None and when > end.stop_asked):
                continue
            detail = ("stopped by a signal razor did not send (checkpoint saved)" if code == EXIT_PREEMPTED
                      else None)
            reason = _signal_name(code)
            out.append(RankOutcome(rank, code, reason, datetime.fromtimestamp(when, timezone.utc), detail=detail))
        if not out:  # every failure came after the stop (cannot happen without one): the first by time
            rank = min((r for r, c in enumerate(end.codes) if c != 0), key=lambda r: end.ended[r])
            out.append(RankOutcome(rank, end.codes[rank], _signal_name(end.codes[rank]),
                                   datetime.fromtimestamp(end.ended[rank], timezone.utc)))
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

    def _summary(self, started: float, then: str) -> str:
        """``job NAME Succeeded in 12.3s, attempt 2, restarts: 1 (counted 1, disruptions 0); ...``:
        the phase and the restart counters in the words of every backend (razorctl status)."""
        took = time.monotonic() - started
        sep = "; " if self.phase is Phase.SUCCEEDED else ": "
        return f"job {self.plan.job.name} {self.phase} in {took:.1f}s, {self._counts()}{sep}{then}"

    def _stopped(self, started: float, codes: list[int]) -> int:
        took = time.monotonic() - started
        self.say(f"job {self.plan.job.name} stopped ({self.stop_reason}) after {took:.1f}s, {self._counts()}; "
                 "submit it again to resume from its last checkpoint")
        return EXIT_PREEMPTED if all(c in (0, EXIT_PREEMPTED) for c in codes) else 130


def _signal_name(code: int) -> str | None:
    """``SIGKILL`` for 137: how a node that a signal ended is named (None for other codes)."""
    if 128 < code < 128 + 65:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None


def submit(job: RazorJob, cwd: Path, source: str = "RazorJob", out: IO[str] | None = None) -> int:
    config = check(job, cwd, source)
    port, how = choose_port(job, config)
    return Supervisor(plan(job, cwd, port, how), out).run()


class LocalBackend(Backend):
    """``--local``: every node a process on this machine, supervised by razorctl in the
    foreground; there is no job to look up afterwards (its work dir holds what it left)."""

    name = "local"

    def render(self, job: RazorJob, source: str, fmt: str = "text") -> str:
        config = check(job, self.cwd, source)
        choice = port_choice(job, config)
        if choice.port is None:
            return render(plan(job, self.cwd, free_port(), "auto"), fmt)
        return render(plan(job, self.cwd, choice.port, "fixed"), fmt)

    def submit(self, job: RazorJob, source: str) -> int:
        return submit(job, self.cwd, source, self.out)

    def _foreground(self, command: str) -> int:
        raise Unsupported(f"razorctl {command} does not apply to --local: submit --local runs the job in "
                          "the foreground (its output, then its outcome) and its work dir keeps the rest")

    def status(self, ref: str, fmt: str = "text") -> int:
        return self._foreground("status")

    def list(self, all_namespaces: bool = False, fmt: str = "text") -> int:
        return self._foreground("list")

    def logs(self, ref: str, rank: int | None, follow: bool) -> int:
        return self._foreground("logs")

    def cancel(self, ref: str) -> int:
        return self._foreground("cancel")

    def wait(self, ref: str, timeout: float) -> int:
        return self._foreground("wait")
