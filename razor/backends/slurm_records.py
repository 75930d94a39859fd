"""The records of a SLURM job, as razorctl (razor.backends.slurm) and the job itself
(razor.backends.slurm_job) both read and write them; apart so that neither side imports the other.

SLURM's own: :func:`run` (SLURM's programs, run as programs: no shell), the fields of a
``scontrol show job|node -o`` line (:func:`record_fields`), SLURM's id lists (:func:`task_ids`),
and the job's Comment, where the job keeps the restart counters SLURM does not
(:class:`CommentState`, :func:`counters`) and razorctl reads them back.

razor's own: scontrol forgets a job MinJobAge (300 s by default) after it ended, and many
clusters keep no accounting (sacct), so what submit writes lets status and logs answer for it
afterwards: a record in the work dir (:data:`RECORD`) and a copy in a per-user index by cluster
and job id (:func:`state_dir`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import progress
from ..policy import Restarts

#: The submit's record in the work dir (the index keeps a copy: :func:`state_dir`).
RECORD = "razor-slurm.json"
#: The job's Comment as razor writes it: ``razor: Restarting attempt 2 counted 1 retryable 0; <message>``.
COMMENT_PREFIX = "razor:"


class SlurmError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- SLURM's programs and records


def run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """One of SLURM's programs, run as a program (no shell); with ``check``, a failure raises
    :class:`SlurmError` with the last line it printed."""
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"{cmd[0]} not found: is SLURM installed here (this machine must be a "
                         "SLURM login node)?")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer within {timeout:g}s: is slurmctld reachable?") from None
    if check and res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise SlurmError(f"{' '.join(cmd[:2])} failed: {msg[-1] if msg else f'exit code {res.returncode}'}")
    return res


# A "Key=" at the start of a field of `scontrol show ... -o` (keys like AllocNode:Sid, CPUs/Task).
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


def record_fields(line: str) -> dict[str, str]:
    """The fields of one ``scontrol show job|node -o`` line. A value runs up to the next
    `` Key=``, so values with spaces (a Comment, a node's Reason) come out whole."""
    fields: dict[str, str] = {}
    text = line.strip()
    matches = list(_FIELD.finditer(text))
    for m, nxt in zip(matches, [*matches[1:], None]):
        end = nxt.start() if nxt is not None else len(text)
        fields.setdefault(m.group(1), text[m.end():end].strip())
    return fields


def as_int(value: str | None) -> int:
    """A SLURM (or record) field as a number; 0 when it is missing or not one."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def task_ids(spec: str) -> list[int]:
    """SLURM's list of ids: ``3``, ``0-1,3`` (an array's task ids, srun's tasks)."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += list(range(int(lo), int(hi) + 1)) if hi.isdigit() else [int(lo)]
    return out


# ----------------------------------------------------------------------------- the job's Comment


@dataclass(frozen=True)
class CommentState:
    """What razor keeps in a job's Comment: the last verdict's phase and the attempt it led to,
    the restarts counted against backoffLimit and those after a retryable exit code, its message.
    No ``=`` in it: ``scontrol show job -o`` would read ``key=`` as a field of its own."""

    phase: str = ""
    attempt: int = 0
    counted: int = 0
    retryable: int = 0
    message: str = ""

    def text(self) -> str:
        return (f"{COMMENT_PREFIX} {self.phase} attempt {self.attempt} counted {self.counted} "
                f"retryable {self.retryable}; {self.message.replace('=', ':')}")


def parse_comment(comment: str | None) -> CommentState:
    """The razor part of a job's Comment (an empty CommentState for any other comment)."""
    text = (comment or "").strip()
    if not text.startswith(COMMENT_PREFIX):
        return CommentState()
    head, _, message = text[len(COMMENT_PREFIX):].partition(";")
    words = head.split()
    phase = words[0] if words else ""
    values = dict(zip(words[1::2], words[2::2]))

    def number(key: str) -> int:
        try:
            return max(0, int(values.get(key, 0)))
        except ValueError:
            return 0

    return CommentState(phase, number("attempt"), number("counted"), number("retryable"), message.strip())


def counters(restarts: int, comment: str | None) -> Restarts:
    """The restart counters of a job SLURM restarted ``restarts`` times: those razor counted
    (its Comment), and every other restart that did not follow a retryable code a disruption."""
    c = parse_comment(comment)
    counted = min(c.counted, restarts)
    retryable = min(c.retryable, restarts - counted)
    return Restarts(restarts, counted, restarts - counted - retryable)


# ----------------------------------------------------------------------------- razor's records
# scontrol forgets a job MinJobAge after it ended, and many clusters keep no accounting (sacct).


def state_dir() -> Path:
    """Where razorctl indexes the jobs it submitted, per cluster: ``$XDG_STATE_HOME/razor/slurm``
    (``~/.local/state/razor/slurm``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "razor" / "slurm"


def cluster_name() -> str:
    """The cluster sbatch and scontrol talk to (``ClusterName``): job ids are only unique within
    one, and a login node may reach several."""
    res = run(["scontrol", "show", "config"], check=False)
    m = re.search(r"^ClusterName\s*=\s*(\S+)", res.stdout, re.M)
    name = m.group(1) if m else "default"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _index_file(job_id: str, cluster: str | None = None) -> Path:
    return state_dir() / (cluster or cluster_name()) / f"{job_id}.json"


def write_record(rec: dict[str, Any], work_dir: Path) -> list[str]:
    """The submit's record, in the work dir (:data:`RECORD`) and in the per-user index (by
    cluster and job id); returns what could not be written (a note: the job runs anyway)."""
    problems = []
    for path in (work_dir / RECORD, _index_file(rec["jobId"], rec["cluster"])):
        try:
            progress.write_json(path, rec)
        except OSError as exc:
            problems.append(f"could not write {path}: {exc.strerror}")
    return problems


def read_record(job_id: str, stdout: str | None = None) -> dict[str, Any] | None:
    """The record of the job (an array's id for an element): from the index, else from the work
    dir that SLURM's StdOut (``<workDir>/logs/...``) names; None when neither has it."""
    candidates = [_index_file(job_id)]
    if stdout:
        candidates.append(Path(stdout).parent.parent / RECORD)
    for path in candidates:
        doc = progress.read_json(path)
        if isinstance(doc, dict) and str(doc.get("jobId")) == job_id:
            return doc
    return None


def records_by_name(name: str) -> list[str]:
    """Job ids of the index's records of that name (the RazorJob's or SLURM's), newest first."""
    folder = state_dir() / cluster_name()
    ids = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        doc = progress.read_json(path)
        if isinstance(doc, dict) and name in (doc.get("name"), doc.get("jobName")) and str(doc.get("jobId")).isdigit():
            ids.append(int(doc["jobId"]))
    return [str(i) for i in sorted(ids, reverse=True)]
