"""The SLURM backend, razorctl's side: sbatch, squeue, sacct, scontrol and scancel, run as
programs (no shell).

``submit`` writes the rendered script (razor.slurm) into the work dir (its ``logs/`` made first,
so no log is lost), submits it and records the job (razor.backends.slurm_records: in the work dir
and in a per-user index, for when SLURM has forgotten the job). ``status`` asks ``scontrol show
job``, then squeue, then sacct (accounting may be off, and scontrol forgets a job MinJobAge after
it ended), else those records, and reports razor's phases (razor.policy.Phase) and restart
counters, as on every backend.

The job's failure policy runs inside the job (razor.backends.slurm_job, which the sbatch script
runs after srun failed): it keeps the counters SLURM does not (the restarts counted against
backoffLimit, those after a retryable exit code) and its verdict in the job's Comment, read here
(razor.backends.slurm_records.counters); every other restart of the job (``Restarts``: preempted,
NODE_FAIL, ``scontrol requeue``, a rank's exit 75) was a disruption.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from .. import progress, slurm
from ..config import apply_options, format_value
from ..policy import Phase
from ..spec import FieldError, RazorJob, SpecError
from . import Backend
from .slurm_records import (SlurmError, as_int, cluster_name, counters, parse_comment, read_record, record_fields,
                            records_by_name, run, state_dir, task_ids, write_record)

#: SLURM states of a job that waits to run: Pending, or Restarting once it ran before.
PENDING_STATES = {"PENDING", "CONFIGURING", "RESIZING", "RESV_DEL_HOLD"}
#: States of a job on its way to its next attempt.
REQUEUE_STATES = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "SPECIAL_EXIT"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
#: A job that ended otherwise than COMPLETED: Failed (CANCELLED too: razor's phases have no other
#: word for a job given up; the SLURM state says which).
FAILED_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "CANCELLED"}


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str            # SLURM's word ("" when only razor's records are left)
    phase: str            # razor's (razor.policy.Phase): Pending, Running, Restarting, Succeeded, Failed, Suspended
    reason: str = ""
    exit_code: str = ""
    source: str = ""      # scontrol, squeue, sacct, or razor's records (RECORD_SOURCE)
    attempt: int = 1
    restarts: int = 0     # every requeue (SLURM's Restarts)
    counted: int = 0      # those counted against backoffLimit
    disruptions: int = 0  # those after a disruption (preempted, NODE_FAIL, exit 75, scontrol requeue)
    message: str = ""     # the verdict on the last failed attempt, else what SLURM says
    excluded: str = ""    # nodes the next attempts avoid (ExcNodeList)
    counters_known: bool = True   # False from razor's records: SLURM's counters went with its record
    work_dir: str = ""
    progress: dict[str, Any] | None = None   # razor.progress.Progress.to_status() of the work dir
    nodes: list[dict[str, Any]] = field(default_factory=list)  # the nodes' end records that failed
    element: int | None = None                # a sweep's element: its index
    options: dict[str, Any] = field(default_factory=dict)    # ... and its cfgOptions values
    elements: list["JobStatus"] = field(default_factory=list)  # a sweep (a job array): its elements

    def describe(self, tty: bool = False, now: float | None = None) -> str:
        """What ``razorctl status --slurm`` prints: the phase, SLURM's state and where it came
        from, the last verdict, the counters, the progress (a bar on a terminal) and the nodes'
        failure messages; for a sweep, each element so."""
        what = f"SLURM job {self.job_id}"
        if self.element is not None:
            what = f"element {self.element} (SLURM job {self.job_id}"
            what += f": {', '.join(f'{k}={format_value(v)}' for k, v in self.options.items())})"
        if self.elements:
            counts = Counter(e.phase for e in self.elements)
            state = f"a sweep of {len(self.elements)}: " + ", ".join(f"{n} {p}" for p, n in counts.items())
        else:
            extra = [f"{k} {v}" for k, v in (("reason", self.reason), ("exit code", self.exit_code))
                     if v and v != "0:0"]
            state = ", ".join([self.state, *extra] if self.state else extra)
        source = "" if self.element is not None and self.source else f"from {self.source}"
        inner = "; ".join(x for x in (state, source) if x)
        lines = [f"{what}: {self.phase}" + (f" ({inner})" if inner else "")]
        if self.message:
            lines.append(f"  message:  {self.message}")
        if self.elements:
            if self.work_dir:
                lines.append(f"  work dir: {self.work_dir}")
            for e in self.elements:
                lines += ["  " + line for line in e.describe(tty, now).splitlines()]
            return "\n".join(lines)
        if self.counters_known:
            lines.append(f"  attempt:  {self.attempt}, restarts: {self.restarts} (counted {self.counted}, "
                         f"disruptions {self.disruptions})")
        else:
            lines.append(f"  attempt:  {self.attempt} (its restart counters went with SLURM's record of the job)")
        if self.excluded:
            lines.append(f"  excluded: {self.excluded}")
        if self.work_dir:
            lines.append(f"  work dir: {self.work_dir}")
        if self.progress is not None:
            p = progress.Progress.from_status(self.progress)
            lines.append(f"  progress: {progress.line(p, tty, now)}")
        for end in self.nodes:
            text = end.get("message") or f"exited with code {end.get('exitCode')}"
            first, *rest = str(text).splitlines() or [""]
            lines.append(f"  node {end.get('nodeRank')} (attempt {end.get('attempt')}): {first}")
            lines += [f"    {line}" for line in rest]
        return "\n".join(lines)


def phase_of(state: str, restarts: int = 0) -> str:
    """razor's phase of a SLURM job state: a job that ran before (``restarts``) and waits to run
    again is Restarting; CANCELLED is Failed."""
    state = state.split()[0].rstrip("+") if state else ""
    if state in REQUEUE_STATES or (state in PENDING_STATES and restarts > 0):
        return Phase.RESTARTING.value
    if state in PENDING_STATES:
        return Phase.PENDING.value
    if state in RUNNING_STATES:
        return Phase.RUNNING.value
    if state == "COMPLETED":
        return Phase.SUCCEEDED.value
    if state in FAILED_STATES:
        return Phase.FAILED.value
    if state in ("SUSPENDED", "STOPPED"):
        return Phase.SUSPENDED.value
    return "Unknown"


def _status(job_id: str, state: str, reason: str, exit_code: str, source: str, restarts: int,
            comment: str, excluded: str = "") -> JobStatus:
    reason = "" if reason in ("None", "(null)") else reason
    c, r = parse_comment(comment), counters(restarts, comment)
    phase = phase_of(state, restarts)
    message = c.message if c.phase and phase != Phase.SUCCEEDED else ""  # the last verdict, while it matters
    return JobStatus(job_id, state.split()[0] if state else state, phase, reason, exit_code, source, restarts + 1,
                     r.total, r.counted, r.disruptions, message, "" if excluded in ("(null)", "None") else excluded)


# ----------------------------------------------------------------------------- razorctl's commands


def submit(job: RazorJob, cwd: Path, config: dict | None = None, python: str | None = None,
           notes: list[str] | None = None) -> str:
    """Write the script into the work dir (its ``logs/`` made first), sbatch it, and record the
    job (:func:`write_record`). A sweep's elements are listed in the record with their work dirs."""
    text = slurm.render(job, str(cwd), python or sys.executable, config)
    work_dir = (cwd / str(job.spec.work_dir)).absolute()
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    script = work_dir / slurm.script_name(job)
    script.write_text(text)
    out = run(["sbatch", "--parsable", str(script)]).stdout.strip()
    job_id = out.split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out!r}, not a job id")
    elements = slurm.sweep_elements(job)
    rec = {"jobId": job_id, "cluster": cluster_name(), "name": job.name,
           "jobName": job.spec.slurm.job_name or job.name, "workDir": str(work_dir), "script": str(script),
           "logs": str(work_dir / "logs"), "nnodes": job.spec.nnodes,
           "submitTime": progress.rfc3339(time.time()),
           "elements": [{"index": e.index, "options": e.options, "workDir": str((cwd / e.work_dir).absolute())}
                        for e in elements]}
    problems = write_record(rec, work_dir)
    if notes is not None:
        notes += problems
    return job_id


def split_ref(job_id: str) -> tuple[str, int | None]:
    """``"42"`` -> ("42", None); ``"42_3"`` (a sweep's element, as SLURM names it) -> ("42", 3)."""
    base, _, index = job_id.partition("_")
    return base, int(index) if index.isdigit() else None


def _indexes(text: str) -> list[int]:
    """SLURM's array task ids: ``3``, ``1-3``, ``[1-3,5]``, ``1-7%2`` (a throttle)."""
    return task_ids(text.strip("[]").split("%")[0])


def _from_record(job_id: str, rec: dict[str, Any], work_dir: str, nnodes: int) -> JobStatus:
    """A job slurmctld no longer knows (and sacct cannot tell), as the records of its work dir say:
    every node of its last attempt ended with 0 (Succeeded), or one did not (Failed, with its
    message); no node record at all: Unknown."""
    ends = progress.read_node_ends(work_dir)
    where = f"razor's records in {work_dir} (slurmctld no longer knows the job; no accounting)"
    if not ends:
        return JobStatus(job_id, "", "Unknown", source=where, counters_known=False, work_dir=work_dir,
                         message=f"no node left an end record in {work_dir}/{progress.STATUS_DIR}/ (the job "
                                 f"never started, or its nodes were killed): see razorctl logs --slurm {job_id}")
    attempt = max(as_int(str(e.get("attempt"))) for e in ends.values())
    last = {r: e for r, e in ends.items() if as_int(str(e.get("attempt"))) == attempt}
    failed = sorted((e for e in last.values() if e.get("exitCode") != 0), key=lambda e: str(e.get("finishedAt")))
    missing = [r for r in range(nnodes) if r not in last]
    if failed:
        first = failed[0]
        message = f"node {first.get('nodeRank')} exited with code {first.get('exitCode')}"
        return JobStatus(job_id, "", Phase.FAILED.value, exit_code=str(first.get("exitCode")), source=where,
                         attempt=attempt, counters_known=False, message=message, work_dir=work_dir)
    if missing:
        return JobStatus(job_id, "", Phase.FAILED.value, source=where, attempt=attempt, counters_known=False,
                         work_dir=work_dir,
                         message=f"node(s) {', '.join(map(str, missing))} left no end record for attempt "
                                 f"{attempt} (killed, or lost with its machine)")
    return JobStatus(job_id, "", Phase.SUCCEEDED.value, source=where, attempt=attempt, counters_known=False,
                     work_dir=work_dir)


def _with_records(st: JobStatus, work_dir: str | None) -> JobStatus:
    """The status with what the work dir says: the progress, and the nodes that failed in their
    last attempt (their message: a rank's traceback, a stall)."""
    if not work_dir:
        return st
    p = progress.read_progress(work_dir)
    ends = progress.read_node_ends(work_dir)
    last = max((as_int(str(e.get("attempt"))) for e in ends.values()), default=0)
    failed = [ends[r] for r in sorted(ends) if as_int(str(ends[r].get("attempt"))) == last
              and ends[r].get("exitCode") not in (0, None)]
    return replace(st, work_dir=work_dir, progress=p.to_status() if p else None, nodes=failed)


def _sweep_phase(phases: list[str]) -> str:
    """A sweep's phase: Running while an element runs, then Restarting, Pending, Suspended; once
    all ended, Succeeded when all did, else Failed (or Unknown)."""
    for phase in (Phase.RUNNING.value, Phase.RESTARTING.value, Phase.PENDING.value, Phase.SUSPENDED.value):
        if phase in phases:
            return phase
    if all(p == Phase.SUCCEEDED.value for p in phases):
        return Phase.SUCCEEDED.value
    return Phase.FAILED.value if Phase.FAILED.value in phases else "Unknown"


def _slurm_rows(job_id: str) -> tuple[str, list[tuple[dict[str, str], list[int | None]]]]:
    """What SLURM knows of the job, row by row, each with the array indexes it stands for
    ([None] for a job that is no array): from scontrol, else squeue, else sacct; ("", []) when
    none knows it."""
    res = run(["scontrol", "show", "job", "-o", job_id], check=False)
    if res.returncode == 0 and res.stdout.strip():
        rows = []
        for line in res.stdout.strip().splitlines():
            f = record_fields(line)
            rows.append((f, _indexes(f["ArrayTaskId"]) if f.get("ArrayTaskId") else [None]))
        return "scontrol", rows
    res = run(["squeue", "-h", "-j", job_id, "-o", "%T|%r|%k|%i"], check=False)
    if res.returncode == 0 and res.stdout.strip():
        rows = []
        for line in res.stdout.strip().splitlines():
            state, reason, comment, ref = (line.split("|", 3) + ["", "", ""])[:4]
            restarts = max(0, parse_comment(comment).attempt - 1)
            f = {"JobState": state, "Reason": reason, "Comment": comment, "Restarts": str(restarts), "JobId": ref}
            rows.append((f, _indexes(ref.partition("_")[2]) if "_" in ref else [None]))
        return "squeue", rows
    res = run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,Reason,Comment"], check=False)
    if res.returncode == 0 and res.stdout.strip():
        rows = []
        for line in res.stdout.strip().splitlines():
            ref, state, code, reason, comment = (line.split("|", 4) + ["", "", "", ""])[:5]
            restarts = max(0, parse_comment(comment).attempt - 1)
            f = {"JobState": state, "ExitCode": code, "Reason": reason, "Comment": comment,
                 "Restarts": str(restarts), "JobId": ref}
            rows.append((f, _indexes(ref.partition("_")[2]) if "_" in ref else [None]))
        return "sacct", rows
    return "", []


def _row_status(ref: str, f: dict[str, str], source: str) -> JobStatus:
    return _status(ref, f.get("JobState", "UNKNOWN"), f.get("Reason", ""), f.get("ExitCode", ""), source,
                   as_int(f.get("Restarts")), f.get("Comment", ""), f.get("ExcNodeList", ""))


def status(job_id: str) -> JobStatus:
    """The job's status from SLURM (scontrol, squeue, sacct), else from razor's records (its work
    dir's razor-status/ and the submit's record), with its progress and its nodes' failures; a
    sweep's with each element's."""
    base, only = split_ref(job_id)
    source, rows = _slurm_rows(job_id)
    stdout = next((f.get("StdOut") for f, _ in rows if f.get("StdOut")), None)
    rec = read_record(base, stdout)
    elements = {e["index"]: e for e in (rec or {}).get("elements", [])}
    nnodes = as_int(str((rec or {}).get("nnodes", 1)))
    if not elements or (rows and rows[0][1] == [None]):
        if rows:
            st = _row_status(job_id, rows[0][0], source)
            work_dir = (rec or {}).get("workDir") or (str(Path(stdout).parent.parent) if stdout else None)
            return _with_records(st, work_dir)
        if rec is None:
            raise SlurmError(f"SLURM job {job_id} is unknown to scontrol, squeue and sacct, and razorctl has "
                             f"no record of it in {state_dir() / cluster_name()}")
        return _with_records(_from_record(job_id, rec, rec["workDir"], nnodes), rec["workDir"])
    # A sweep: one status per element, from SLURM's rows where it has them, else from the records.
    seen: dict[int, JobStatus] = {}
    for f, indexes in rows:
        for i in indexes:
            if i is not None and i in elements:
                seen[i] = _row_status(f.get("JobId", f"{base}_{i}") if len(indexes) == 1 else f"{base}_{i}",
                                      f, source)
    out = []
    for i, e in sorted(elements.items()):
        if only is not None and i != only:
            continue
        st = seen.get(i) or _from_record(f"{base}_{i}", rec, e["workDir"], nnodes)
        out.append(replace(_with_records(st, e["workDir"]), element=i, options=e.get("options", {})))
    if only is not None:
        if not out:
            raise SlurmError(f"SLURM job {base} has no element {only} (its sweep has {len(elements)})")
        return replace(out[0], element=None, job_id=job_id)
    where = source or "razor's records (slurmctld no longer knows the job; no accounting)"
    return JobStatus(base, "", _sweep_phase([e.phase for e in out]), source=where, work_dir=rec["workDir"],
                     elements=out)


def find(name_or_id: str) -> str:
    """A job id from an id (``42``, or ``42_3`` for a sweep's element), or the newest job of that
    name: in SLURM's queue, its accounting, or razorctl's index of the jobs it submitted."""
    base, index = split_ref(name_or_id)
    if base.isdigit() and (index is not None or "_" not in name_or_id):
        return name_or_id
    res = run(["squeue", "-h", "-n", name_or_id, "-o", "%F"], check=False)
    ids = sorted({int(i) for i in res.stdout.split() if i.isdigit()}, reverse=True)
    if not ids:
        res = run(["sacct", "-n", "-X", "-P", "--name", name_or_id, "-o", "JobID"], check=False)
        ids = sorted({int(i.partition("_")[0]) for i in res.stdout.split() if i.partition("_")[0].isdigit()},
                     reverse=True)
    if ids:
        return str(ids[0])
    recorded = records_by_name(name_or_id)
    if recorded:
        return recorded[0]
    raise SlurmError(f"no SLURM job named {name_or_id!r} (give the job id instead)")


def cancel(job_id: str) -> None:
    run(["scancel", job_id])


def jobs() -> str:
    return run(["squeue", "-o", "%.10i %.24j %.10T %.6D %.10M %R"]).stdout


def wait(job_id: str, timeout: float, interval: float = 1.0) -> JobStatus:
    """Wait until the job ended: Succeeded or Failed (a sweep: every element), or Unknown when
    only razor's records are left and they do not tell."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(job_id)
        if st.phase in (Phase.SUCCEEDED, Phase.FAILED) or st.phase == "Unknown":
            return st
        if time.monotonic() > deadline:
            raise SlurmError(f"SLURM job {job_id} did not finish within {timeout:g}s ({st.phase})")
        time.sleep(interval)


def log_file(job_id: str, rank: int | None) -> Path:
    """The batch script's log (``rank`` None) or node ``rank``'s: from the submit's record, else
    from scontrol's StdOut. A sweep's log is an element's: ``42_3``."""
    base, index = split_ref(job_id)
    res = run(["scontrol", "show", "job", "-o", job_id], check=False)
    f = record_fields(res.stdout.strip().splitlines()[0]) if res.returncode == 0 and res.stdout.strip() else {}
    rec = read_record(base, f.get("StdOut"))
    if rec is not None:
        if rec.get("elements") and index is None:
            raise SlurmError(f"SLURM job {base} is a sweep of {len(rec['elements'])} element(s): name one, "
                             f"e.g. razorctl logs --slurm {base}_0")
        name = f"{rec['jobName']}-{base}" + (f"_{index}" if index is not None else "")
        path = Path(rec["logs"]) / f"{name}.out"
    elif f.get("StdOut"):
        path = Path(f["StdOut"])
    else:
        raise SlurmError(f"SLURM job {job_id}: its log folder is unknown (scontrol no longer shows it, and "
                         f"razorctl has no record of it in {state_dir() / cluster_name()})")
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
        if not follow or status(job_id).phase in (Phase.SUCCEEDED, Phase.FAILED, "Unknown"):
            if follow and path.exists():
                with path.open() as fh:
                    fh.seek(pos)
                    out.write(fh.read())
            return
        time.sleep(1)




class SlurmBackend(Backend):
    """``--slurm``: an sbatch script submitted from this machine (a login node); ``ref`` is the
    job id (``42_3``: element 3 of a sweep), or the name of the newest job of that name.
    ``sweep``: ``razorctl submit --slurm --sweep KEY=V1,V2`` items, merged into ``slurm.sweep``."""

    name = "slurm"

    def __init__(self, cwd: Path | None = None, out: IO[str] | None = None, err: IO[str] | None = None,
                 sweep: list[str] | None = None, **other: object):
        super().__init__(cwd, out, err, **other)
        self.sweep = list(sweep or [])

    def _prepare(self, job: RazorJob, source: str) -> tuple[RazorJob, dict | None]:
        """The job with the command line's sweep, and its config: the same checks as --local
        (the config, cfgOptions, resume), and every sweep value against the config."""
        from .local import check

        job = slurm.with_sweep(job, self.sweep, source)
        config = check(job, self.cwd, source)
        if config is not None and not job.spec.script:
            errors = []
            for key, values in job.spec.slurm.sweep.items():
                for value in values:
                    try:
                        apply_options(json.loads(json.dumps(config)), {key: value})
                    except Exception as exc:  # ConfigError, and what a value of the wrong shape raises
                        errors.append(FieldError("spec.slurm.sweep", str(exc).removeprefix("--cfg-options ")))
                        break
            if errors:
                raise SpecError(source, errors)
        return job, config

    def render(self, job: RazorJob, source: str, fmt: str = "text") -> str:
        job, config = self._prepare(job, source)
        return slurm.render(job, str(self.cwd), sys.executable, config)

    def submit(self, job: RazorJob, source: str) -> int:
        job, config = self._prepare(job, source)
        notes: list[str] = []
        job_id = submit(job, self.cwd, config, notes=notes)
        for note in notes:
            self.note(note)
        elements = slurm.sweep_elements(job)
        what = f"a sweep of {len(elements)} element(s), " if elements else ""
        self.say(f"razor: submitted RazorJob {job.name} as SLURM job {job_id}; {what}logs in "
                 f"{job.spec.work_dir}/logs/")
        for e in elements:
            self.say(f"  {job_id}_{e.index}: {e.describe()} -> {e.work_dir}")
        self.say(f"  razorctl status --slurm {job_id}    razorctl logs --slurm -f {job_id}"
                 + ("_0" if elements else ""))
        return 0

    def status(self, ref: str, fmt: str = "text") -> int:
        st = status(find(ref))
        if fmt == "text":
            self.say(st.describe(tty=self.out.isatty()))
        elif fmt == "json":
            self.say(json.dumps(asdict(st)))
        else:
            import yaml

            self.out.write(yaml.safe_dump(asdict(st), sort_keys=False))
        return 0

    def list(self, all_namespaces: bool = False, fmt: str = "text") -> int:
        self.out.write(jobs())
        return 0

    def logs(self, ref: str, rank: int | None, follow: bool) -> int:
        logs(find(ref), rank, follow, self.out)
        return 0

    def cancel(self, ref: str) -> int:
        job_id = find(ref)
        cancel(job_id)
        self.say(f"SLURM job {job_id} cancelled")
        return 0

    def wait(self, ref: str, timeout: float) -> int:
        st = wait(find(ref), timeout)
        self.say(st.describe())
        return 0 if st.phase == "Succeeded" else 1


# The sbatch scripts of jobs submitted before razor.backends.slurm_job existed (requeued, they
# run again with this razor) call ``python -m razor.backends.slurm after-srun``.
if __name__ == "__main__":
    from .slurm_job import main

    sys.exit(main())
