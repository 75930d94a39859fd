"""The SLURM backend: sbatch, squeue, sacct, scontrol and scancel, run as programs (no shell).

``submit`` writes the rendered script into the work dir (its ``logs/`` made first, so no log is
lost), submits it and records the job id there. ``status`` asks squeue, then sacct, then
``scontrol show job`` (accounting may be off); PREEMPTED and REQUEUED mean pending again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .. import slurm
from ..spec import RazorJob

RECORD = "razor-slurm.json"
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "CONFIGURING",
                  "RESIZING", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
FAILED_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str            # SLURM's word
    phase: str            # razor's: Pending, Running, Succeeded, Failed, Cancelled, Suspended
    reason: str = ""
    exit_code: str = ""
    source: str = ""      # squeue, sacct or scontrol

    def describe(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in (("reason", self.reason), ("exit code", self.exit_code)) if v)
        return f"SLURM job {self.job_id}: {self.phase} ({self.state}{extra}; from {self.source})"


def phase_of(state: str) -> str:
    state = state.split()[0].rstrip("+") if state else ""
    if state in PENDING_STATES:
        return "Pending"
    if state in RUNNING_STATES:
        return "Running"
    if state == "COMPLETED":
        return "Succeeded"
    if state in FAILED_STATES:
        return "Failed"
    if state == "CANCELLED":
        return "Cancelled"
    if state in ("SUSPENDED", "STOPPED"):
        return "Suspended"
    return "Unknown"


def _run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
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


def submit(job: RazorJob, cwd: Path, config: dict | None = None, python: str | None = None) -> str:
    text = slurm.render(job, str(cwd), python or sys.executable, config)
    work_dir = cwd / str(job.spec.work_dir)
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    script = work_dir / slurm.script_name(job)
    script.write_text(text)
    out = _run(["sbatch", "--parsable", str(script)]).stdout.strip()
    job_id = out.split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    (work_dir / RECORD).write_text(json.dumps({"job_id": job_id, "name": job.name, "script": str(script),
                                               "logs": str(work_dir / "logs")}) + "\n")
    return job_id


def _fields(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


def status(job_id: str) -> JobStatus:
    res = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], check=False)
    line = res.stdout.strip()
    if res.returncode == 0 and line:
        state, _, reason = line.partition("|")
        return JobStatus(job_id, state, phase_of(state), "" if reason == "None" else reason, "", "squeue")
    res = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Reason"], check=False)
    line = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else ""
    if line:
        state, code, reason = (line.split("|") + ["", ""])[:3]
        return JobStatus(job_id, state.split()[0], phase_of(state), "" if reason == "None" else reason, code,
                         "sacct")
    res = _run(["scontrol", "show", "job", "-o", job_id], check=False)
    if res.returncode == 0 and res.stdout.strip():
        f = _fields(res.stdout)
        state = f.get("JobState", "UNKNOWN")
        reason = f.get("Reason", "")
        return JobStatus(job_id, state, phase_of(state), "" if reason == "None" else reason,
                         f.get("ExitCode", ""), "scontrol")
    raise SlurmError(f"SLURM job {job_id} is unknown to squeue, sacct and scontrol")


def find(name_or_id: str) -> str:
    """A job id from an id, or the newest job of that name."""
    if name_or_id.isdigit():
        return name_or_id
    res = _run(["squeue", "-h", "-n", name_or_id, "-o", "%i"], check=False)
    ids = sorted((int(i) for i in res.stdout.split() if i.isdigit()), reverse=True)
    if not ids:
        res = _run(["sacct", "-n", "-X", "-P", "--name", name_or_id, "-o", "JobID"], check=False)
        ids = sorted((int(i) for i in res.stdout.split() if i.isdigit()), reverse=True)
    if not ids:
        raise SlurmError(f"no SLURM job named {name_or_id!r} (give the job id instead)")
    return str(ids[0])


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])


def jobs() -> str:
    return _run(["squeue", "-o", "%.10i %.24j %.10T %.6D %.10M %R"]).stdout


def wait(job_id: str, timeout: float, interval: float = 1.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status(job_id)
        if st.phase in ("Succeeded", "Failed", "Cancelled"):
            return st
        if time.monotonic() > deadline:
            raise SlurmError(f"SLURM job {job_id} did not finish within {timeout:g}s ({st.state})")
        time.sleep(interval)


def log_file(job_id: str, rank: int | None) -> Path:
    res = _run(["scontrol", "show", "job", "-o", job_id], check=False)
    f = _fields(res.stdout)
    out = f.get("StdOut")
    if not out:
        raise SlurmError(f"SLURM job {job_id}: its log folder is unknown (scontrol no longer shows it)")
    path = Path(out)
    if rank is None:
        return path
    return path.with_name(path.name.replace(".out", f"-node{rank}.out"))


def logs(job_id: str, rank: int | None, follow: bool, out: IO[str]) -> None:
    path = log_file(job_id, rank)
    pos = 0
    while True:
        if path.exists():
            with path.open() as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            out.write(chunk)
            out.flush()
        elif not follow:
            raise SlurmError(f"no log yet at {path}")
        if not follow or status(job_id).phase in ("Succeeded", "Failed", "Cancelled"):
            if follow and path.exists():
                with path.open() as fh:
                    fh.seek(pos)
                    out.write(fh.read())
            return
        time.sleep(1)
