"""The local backend's job records: what ``razorctl status|logs|cancel|wait|list --local`` read.

While ``submit --local`` runs, its supervisor (razor.backends.local_run) keeps a record of the job
under a per-user state dir (:func:`state_dir`), one JSON file per supervisor (:class:`JobRecord`),
and copies each node's output to ``<work_dir>/razor-status/logs/``, so that any terminal of the
same user finds the job, its phase, its progress and its logs. The record also says what
``razorctl status --local`` prints of it (:meth:`JobRecord.describe`, :meth:`JobRecord.to_status`).

It is apart because the commands that read records run no node: they need neither the plan nor
the supervisor, and the record's format is kept in one place for the one that writes it and
those that read it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..policy import Phase, Restarts
from ..progress import (STATUS_DIR, duration, line as progress_line, parse_rfc3339, read_json, read_node_ends,
                        read_progress, rfc3339, write_json)
from . import Refused

if TYPE_CHECKING:  # only an annotation: local_run imports this module
    from .local_run import LocalPlan


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


#: The phase shown for a job whose supervisor is gone without recording its end (killed).
UNKNOWN = "Unknown"
#: A record's grace when it has none (records of another version).
DEFAULT_GRACE = 120.0


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
