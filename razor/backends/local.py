"""The local backend: every node of a RazorJob as a process on this machine, or one node of it.

``plan`` and ``render`` are pure; ``check`` and ``choose_port`` do this machine's checks;
``LocalBackend`` is razorctl's ``--local`` (razor.backends.Backend). Each node is
``python -m razor.node ...`` with its own NODE_RANK, all meeting at 127.0.0.1:PORT; with
``--node-rank N --master-addr HOST`` only node N runs here, and meets the others (the same command
on their machines) at HOST:PORT. razorctl exits with the job's outcome.

Two modules hold the rest: razor.backends.local_run, the supervisor that runs the nodes (gang
stop, the failure policy's restarts, Ctrl-C as checkpoint-and-stop); razor.backends.local_jobs,
the job records it keeps under a per-user state dir, so that ``razorctl
status|logs|cancel|wait|list --local`` find a job from another terminal.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from ..config import ConfigError, apply_options, load_config
from ..launcher import Network, NodeLaunch, PortChoice, job_port, node_launches
from ..node import port_free
from ..policy import Phase
from ..progress import duration, parse_rfc3339
from ..spec import FieldError, RazorJob, SpecError
from . import Backend, Refused
from .local_jobs import DEFAULT_GRACE, JobRecord, state_dir
from .local_run import MASTER_ADDR, LocalPlan, PortInUse, Supervisor, describe, free_port


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


# ----------------------------------------------------------------------------- submit and the backend (I/O)


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
