"""The local backend: every node of a RazorJob as a process on this machine.

``plan`` and ``render`` are pure; ``check``, ``choose_port`` and ``Supervisor`` do the I/O.
Each node is ``python -m razor.node ...`` with its own NODE_RANK, all meeting at
127.0.0.1:PORT. The supervisor streams each node's output prefixed by its rank, stops the
whole gang when one node fails (no rank is left hanging in a collective), passes Ctrl-C on as a
checkpoint-and-stop (the nodes get the job's terminationGracePeriodSeconds, as a pod would, then
are killed), and exits with the job's outcome.
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
from pathlib import Path
from typing import IO, Any

from ..config import ConfigError, apply_options, load_config
from ..launcher import EXIT_PREEMPTED, NodeLaunch, fixed_port, node_launches
from ..node import kill_tree, port_free
from ..spec import FieldError, RazorJob, SpecError

MASTER_ADDR = "127.0.0.1"


class PortInUse(RuntimeError):
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


def choose_port(job: RazorJob, config: dict[str, Any] | None) -> tuple[int, str]:
    port = fixed_port(job, config)
    if port is None:
        return free_port(), "auto"
    if not port_free(port):
        raise PortInUse(
            f"spec.port: port {port} on this machine is in use (another job, or a process still "
            f"holding it); set port: auto to let razor pick a free one, or choose another port"
        )
    return port, "fixed"


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


class Supervisor:
    """Runs a plan's nodes. After a stop (Ctrl-C, SIGTERM) each node has ``grace`` seconds to save
    a checkpoint and exit, the job's ``terminationGracePeriodSeconds`` unless given: razor.node
    stops its training within it (RAZOR_STOP_GRACE), and what is left is killed after it."""

    def __init__(self, p: LocalPlan, out: IO[str] | None = None, grace: float | None = None):
        self.plan, self.out = p, out or sys.stdout
        self.grace = float(p.job.spec.termination_grace_period_seconds if grace is None else grace)
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stop_reason: str | None = None
        self.first_failure: tuple[int, int] | None = None  # (rank, exit code): the root cause

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

    def _signal(self, signum: int, _frame: object) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
            self.say(f"{self.stop_reason}: stopping all nodes (they save a checkpoint first); what is "
                     f"still running after {self.grace:g}s is killed, or now on a second Ctrl-C")
            self._terminate()
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
        pumps = []
        try:
            for node in p.nodes:
                proc = subprocess.Popen(
                    node.argv, cwd=p.cwd, env={**os.environ, **node.env}, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
                self.procs.append(proc)
            for rank, proc in enumerate(self.procs):
                t = threading.Thread(target=self._pump, args=(rank, proc.stdout), daemon=True)
                t.start()
                pumps.append(t)
            codes = self._wait()
        finally:
            self._kill()  # whatever is left of every node's process group
            for t in pumps:
                t.join(timeout=5)
            for sig, old in handlers.items():
                signal.signal(sig, old)
        took = time.monotonic() - started
        return self._outcome(codes, took)

    def _wait(self) -> list[int | None]:
        failed_at: float | None = None
        stop_at: float | None = None
        killed = False
        while True:
            codes = [proc.poll() for proc in self.procs]
            if all(c is not None for c in codes):
                return codes
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad and failed_at is None and self.stop_reason is None:
                rank, code = bad[0]
                self.first_failure = (rank, code if code >= 0 else 128 - code)
                failed_at = time.monotonic()
                self.say(f"node {rank} exited with code {code}; stopping the other nodes")
                self._terminate()
            if self.stop_reason and stop_at is None:
                stop_at = time.monotonic()
            if failed_at and time.monotonic() - failed_at > min(self.grace, FAILURE_GRACE):
                self._kill()
            if stop_at and time.monotonic() - stop_at > self.grace:
                if not killed:
                    self.say(f"nodes still running {self.grace:g}s after the stop "
                             "(spec.terminationGracePeriodSeconds); killing them")
                    killed = True
                self._kill()
            time.sleep(0.1)

    def _outcome(self, codes: list[int | None], took: float) -> int:
        name = self.plan.job.name
        codes = [c if c is None or c >= 0 else 128 - c for c in codes]
        if all(c == 0 for c in codes):
            self.say(f"job {name} succeeded in {took:.1f}s; work dir {self.plan.job.spec.work_dir}")
            return 0
        if self.stop_reason:
            self.say(f"job {name} stopped ({self.stop_reason}) after {took:.1f}s; submit it again "
                     "to resume from its last checkpoint")
            return EXIT_PREEMPTED if all(c in (0, EXIT_PREEMPTED) for c in codes) else 130
        first = self.first_failure or next((r, c) for r, c in enumerate(codes) if c != 0)
        self.say(f"job {name} failed after {took:.1f}s: node {first[0]} exited with code {first[1]}")
        return first[1] or 1


def submit(job: RazorJob, cwd: Path, source: str = "RazorJob", out: IO[str] | None = None) -> int:
    config = check(job, cwd, source)
    port, how = choose_port(job, config)
    return Supervisor(plan(job, cwd, port, how), out).run()
