"""Submit to first optimizer step: `razorctl submit --slurm` against a hand-written sbatch script of the same job, side by side. Target: at most 1 s more.

Both sides train trainer/configs/digits_mlp.yaml with ``schedule.epochs=2`` on 1 node x 2
processes (CPU, gloo, ``OMP_NUM_THREADS=1``, ``CUDA_VISIBLE_DEVICES=-1``), in partition
``debug`` of the one-node test cluster of tests/slurm_cluster.py (a real slurmctld/slurmd on
loopback, started or found running by scripts/slurm-setup.sh), each run in a fresh work dir,
with the same Python (.venv/bin/python) and 2 CPUs for the job:

- razor: a RazorJob YAML (``slurm: {partition: debug, cpusPerTask: 2}``), submitted with
  ``.venv/bin/python -m razor.cli submit --slurm FILE``;
- baseline: the minimal sbatch script a user would write without razor (``#SBATCH --nodes=1
  --ntasks-per-node=1 --cpus-per-task=2 --partition=debug --output=...``, then ``srun python -m
  torch.distributed.run --nnodes=1 --nproc-per-node=2 --master-addr=$(hostname)
  --master-port=<20000 + job id % 20000> -m razor_trainer CONFIG --launcher pytorch --work-dir
  DIR --cfg-options schedule.epochs=2``), submitted with ``sbatch --parsable``.

Per run, the clock starts (``time.time()``) just before the submit command is spawned:

- submit command: its wall time (razorctl: Python start-up, validation, render, sbatch);
- submit → first optimizer step: the trainer's ``first_step_time`` (a ``time.time()`` stamp in
  <work_dir>/summary.json) minus the start;
- submit → job end: until ``scontrol show job -o ID`` first shows a final JobState (polled
  every 0.2 s; the job must end COMPLETED).

Where the daemons' logs allow it (their millisecond stamps, checked against the benchmark's own
clock), submit → first step is split into: the submit command until slurmctld accepted the job,
the scheduler (accepted → started: SLURM's scheduling passes, the same for both sides but
jittery), slurmd starting the batch script, the script's own steps up to ``srun``'s step
launch, and step launch → first optimizer step (razor.node, torchrun, the trainer's start-up).

The queue is empty and the node idle before every run (waited for, bounded), so jobs never
overlap on the node's 2 CPUs, and the machine's CPUs are quiet (under 25% busy over 2 seconds;
waited for up to 2 minutes, then the run goes on and the report says so). The sides alternate
(razor, baseline, razor, ...) after an untimed warm-up pair. Also timed: ``razorctl render
--slurm`` of the same job (the CLI's start-up and checks without sbatch). Every wait is
bounded; a job left behind by an error is cancelled.

    .venv/bin/python benchmarks/slurm_submit.py [--repeat 3] [--warmup 1] [--epochs 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from common import (CONFIG, NPROC, PYTHON, ROOT, BenchError, bench_env, median, outcome, spread, verdict,
                    write_job)

sys.path.insert(0, str(ROOT / "tests"))  # slurm_cluster (standard library only)

from slurm_cluster import SlurmCluster, SlurmError  # noqa: E402

TARGET = 1.0  # seconds: razor − baseline of submit → first optimizer step, at most
CPUS = 2
EPOCHS = 2
PARTITION = "debug"
RAZOR_NAME, BASE_NAME = "bench-slurm-razor", "bench-slurm-baseline"
SUBMIT_TIMEOUT = 60.0   # seconds for one submit command
QUEUE_TIMEOUT = 600.0   # seconds to wait for an empty queue and an idle node
QUIET_TIMEOUT = 120.0   # seconds to wait for the machine's CPUs to be quiet before a run
QUIET_BUSY = 0.25       # "quiet": under this share of all CPUs busy over QUIET_WINDOW seconds
QUIET_WINDOW = 2.0
POLL = 0.2
DISTURBED = 0.25        # a run that used this much more machine CPU than the leanest is flagged

#: The stages of submit → first step, from the daemons' logs: (key, label).
STAGES = (
    ("accept", "submit spawned → job accepted by slurmctld"),
    ("sched", "job accepted → started by the scheduler"),
    ("batch", "job started → batch script launched by slurmd"),
    ("script", "batch script → `srun` step launched"),
    ("train", "step launched → first optimizer step"),
)


@dataclass(frozen=True)
class Sample:
    job_id: str
    submit: float       # wall time of the submit command
    first_step: float   # submit spawned -> first optimizer step
    end: float          # submit spawned -> final JobState seen
    stages: dict[str, float] = field(default_factory=dict)  # see STAGES; empty when the logs did not tell
    cpu: float = 0.0          # CPU seconds the whole machine used, submit spawned -> job end seen
    iowait: float = 0.0       # CPU seconds idle waiting for I/O in that time (all CPUs)
    steal: float = 0.0        # CPU seconds the hypervisor took away in that time (all CPUs)
    busy_before: float = 0.0  # share of the machine's CPUs busy in the 2 seconds before the submit


@dataclass
class Result:
    epochs: int
    razor: list[Sample] = field(default_factory=list)
    baseline: list[Sample] = field(default_factory=list)
    render: list[float] = field(default_factory=list)   # `razorctl render --slurm` wall time
    cluster_start: float = 0.0                           # seconds scripts/slurm-setup.sh took
    notes: list[str] = field(default_factory=list)       # anything that may have disturbed a run

    def med(self, side: str, attr: str) -> float:
        return median([getattr(s, attr) for s in getattr(self, side)])

    def diff(self, attr: str) -> float:
        """razor − baseline of the medians."""
        return self.med("razor", attr) - self.med("baseline", attr)

    def stage(self, side: str, key: str) -> list[float]:
        return [s.stages[key] for s in getattr(self, side) if key in s.stages]

    def unqueued(self, side: str) -> list[float]:
        """submit → first step less the time the job waited for the scheduler, where known."""
        return [s.first_step - s.stages["sched"] for s in getattr(self, side) if "sched" in s.stages]

    def cpus(self, side: str) -> list[float]:
        return [s.cpu for s in getattr(self, side)]

    def disturbed(self) -> list[str]:
        """Runs whose machine-wide CPU seconds exceed the least of all runs by over DISTURBED:
        the same job, so the excess is other work on the machine (it slows the run too)."""
        least = min(self.cpus("razor") + self.cpus("baseline"))
        return [f"{side} run {i + 1} ({s.cpu:.1f} CPU s against {least:.1f})"
                for side in ("razor", "baseline") for i, s in enumerate(getattr(self, side))
                if s.cpu > least * (1 + DISTURBED)]

    @property
    def met(self) -> bool:
        return self.diff("first_step") <= TARGET


# ------------------------------------------------------------------------------------ the cluster


def slurm_env(cluster: SlurmCluster) -> dict[str, str]:
    """bench_env() (CPU only, OMP_NUM_THREADS=1) for this cluster: SLURM_CONF, no other SLURM_*."""
    env = {k: v for k, v in bench_env().items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = cluster.env()["SLURM_CONF"]
    return env


def queue(cluster: SlurmCluster) -> list[str]:
    """Every job squeue lists (pending, running, completing), as "ID NAME STATE"."""
    out = cluster.run("squeue", "-h", "-o", "%i %j %T").stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def wait_idle(cluster: SlurmCluster, timeout: float = QUEUE_TIMEOUT) -> float:
    """Wait until the queue is empty and every node idle; the seconds it took."""
    tic = time.monotonic()
    deadline = tic + timeout
    while True:
        jobs = queue(cluster)
        nodes = cluster.node_states()
        if not jobs and nodes and all(s == "idle" for s in nodes.values()):
            return time.monotonic() - tic
        if time.monotonic() >= deadline:
            raise BenchError(f"the SLURM queue is not empty or the node not idle after {timeout:.0f}s: "
                             f"jobs {jobs}, nodes {nodes}")
        time.sleep(POLL)


USER_HZ = os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int, int, int]:
    """The machine's CPU ticks since boot, from /proc/stat: (all, busy, iowait, steal); busy is
    user, nice, system, irq and softirq (guest time is in user); steal is time the hypervisor
    gave this VM's CPUs to someone else."""
    with open("/proc/stat") as fh:
        t = [int(x) for x in fh.readline().split()[1:9]]
    return sum(t), t[0] + t[1] + t[2] + t[5] + t[6], t[4], t[7]


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over ``seconds``."""
    total0, busy0, _, steal0 = cpu_ticks()
    time.sleep(seconds)
    total1, busy1, _, steal1 = cpu_ticks()
    return (busy1 - busy0 + steal1 - steal0) / max(1, total1 - total0)


def wait_quiet(timeout: float = QUIET_TIMEOUT) -> tuple[bool, float]:
    """Wait until the CPUs are quiet (other work on a shared machine moves the numbers a lot);
    (whether they are, the busy share of the last QUIET_WINDOW), also when ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    while True:
        busy = cpu_busy(QUIET_WINDOW)
        if busy < QUIET_BUSY or time.monotonic() >= deadline:
            return busy < QUIET_BUSY, busy


# ---------------------------------------------------------------------------- the daemons' logs


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] (.*)$")


def _log_lines(path: Path, size: int = 1 << 20) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _first(lines: list[str], pattern: re.Pattern[str]) -> float | None:
    """The time.time() of the first line matching ``pattern`` (the daemons log local time, ms)."""
    for line in lines:
        m = _STAMP.match(line)
        if m and pattern.search(m.group(2)):
            return datetime.datetime.fromisoformat(m.group(1)).timestamp()
    return None


def stages(cluster: SlurmCluster, job_id: str, started: float, submit: float,
           first_step: float) -> dict[str, float]:
    """submit → first step in STAGES, from slurmctld's and slurmd's logs; {} when they do not
    tell (another log format, a time zone that differs from ours, a rotated log)."""
    logs = cluster.slurm_dir / "log"
    ctld = _log_lines(logs / "slurmctld.log")
    slurmd = [line for p in sorted(logs.glob("slurmd-*.log")) for line in _log_lines(p)]
    j = re.escape(job_id)
    accepted = _first(ctld, re.compile(rf"_slurm_rpc_submit_batch_job: JobId={j} "))
    allocated = _first(ctld, re.compile(rf"(sched: Allocate|_start_job: Started) JobId={j} "))
    batch = _first(slurmd, re.compile(rf"Launching batch job {j} "))
    step = _first(slurmd, re.compile(rf"launch task StepId={j}\.0 "))
    marks = [started, accepted, allocated, batch, step, started + first_step]
    if any(m is None for m in marks):
        return {}
    # The logs' clock must agree with ours: sbatch's RPC is accepted while the submit command runs.
    if not started - 0.01 <= accepted <= started + submit + 0.01 or marks != sorted(marks):
        return {}
    return {"accept": accepted - started, "sched": allocated - accepted, "batch": batch - allocated,
            "script": step - batch, "train": started + first_step - step}


# ------------------------------------------------------------------------------------ the sides


def razor_job(tmp: Path, name: str, epochs: int) -> tuple[Path, Path]:
    work_dir = tmp / name / "wd"
    (tmp / name).mkdir(parents=True)
    path = write_job(tmp / name / "job.yaml", RAZOR_NAME, work_dir, epochs,
                     slurm={"partition": PARTITION, "cpusPerTask": CPUS})
    return path, work_dir


def baseline_script(tmp: Path, name: str, epochs: int) -> tuple[Path, Path]:
    """The hand-written script; its work dir is made first (sbatch does not make --output's dir)."""
    work_dir = tmp / name / "wd"
    work_dir.mkdir(parents=True)
    q = shlex.quote
    text = f"""#!/bin/bash
#SBATCH --job-name={BASE_NAME}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task={CPUS}
#SBATCH --partition={PARTITION}
#SBATCH --output={work_dir}/slurm-%j.out
export OMP_NUM_THREADS=1
srun {q(PYTHON)} -m torch.distributed.run --nnodes=1 --nproc-per-node={NPROC} \\
    --master-addr=$(hostname) --master-port=$((20000 + SLURM_JOB_ID % 20000)) \\
    -m razor_trainer {q(str(CONFIG))} --launcher pytorch --work-dir {q(str(work_dir))} \\
    --cfg-options schedule.epochs={epochs}
"""
    path = tmp / name / "job.sbatch"
    path.write_text(text)
    return path, work_dir


def _tail(paths: list[Path], lines: int = 25) -> str:
    parts = []
    for p in paths:
        try:
            parts.append(f"---- {p} ----\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        except OSError:
            parts.append(f"---- {p}: (no log) ----")
    return "\n".join(parts)


def submit_and_wait(cluster: SlurmCluster, cmd: list[str], job_name: str, work_dir: Path,
                    logs: Callable[[str], list[Path]], timeout: float, active: list[str]) -> Sample:
    """Spawn the submit command (the clock starts just before), wait for the job to end, read the
    first step. ``active`` holds the job id while the job may still run (for cleanup on error)."""
    env = slurm_env(cluster)
    ticks0 = cpu_ticks()
    started, tic = time.time(), time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=SUBMIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        cluster.run("scancel", f"--name={job_name}", check=False)  # it may have reached sbatch
        raise BenchError(f"{' '.join(cmd)} did not finish within {SUBMIT_TIMEOUT:g}s") from None
    submit = time.monotonic() - tic
    if proc.returncode != 0:
        cluster.run("scancel", f"--name={job_name}", check=False)
        raise BenchError(f"{' '.join(cmd)}\nexited with code {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    m = re.search(r"as SLURM job (\d+)", proc.stdout) or re.fullmatch(r"(\d+)(;\S*)?", proc.stdout.strip())
    if m is None:
        cluster.run("scancel", f"--name={job_name}", check=False)
        raise BenchError(f"{' '.join(cmd)} printed no job id:\n{proc.stdout}")
    job_id = m.group(1)
    active.append(job_id)
    try:
        state = cluster.wait_job(job_id, timeout=timeout)
    except SlurmError as e:
        raise BenchError(f"{e}\n{_tail(logs(job_id))}") from None
    end = time.monotonic() - tic
    _, cpu, iowait, steal = ((b - a) / USER_HZ for a, b in zip(ticks0, cpu_ticks()))
    active.remove(job_id)
    if state != "COMPLETED":
        raise BenchError(f"SLURM job {job_id} ({job_name}) ended {state}:\n{_tail(logs(job_id))}")
    summary_path = work_dir / "summary.json"
    try:
        first = json.loads(summary_path.read_text()).get("first_step_time")
    except (OSError, ValueError) as e:
        raise BenchError(f"SLURM job {job_id}: no readable {summary_path} ({e})\n"
                         f"{_tail(logs(job_id))}") from None
    if first is None:
        raise BenchError(f"{summary_path} has no first_step_time")
    first_step = float(first) - started
    return Sample(job_id, submit, first_step, end, stages(cluster, job_id, started, submit, first_step),
                  cpu, iowait, steal)


def run_razor(cluster: SlurmCluster, tmp: Path, name: str, epochs: int, timeout: float,
              active: list[str]) -> Sample:
    path, work_dir = razor_job(tmp, name, epochs)
    cmd = [PYTHON, "-m", "razor.cli", "submit", "--slurm", str(path)]
    return submit_and_wait(cluster, cmd, RAZOR_NAME, work_dir,
                           lambda j: sorted((work_dir / "logs").glob(f"*-{j}*")), timeout, active)


def run_baseline(cluster: SlurmCluster, tmp: Path, name: str, epochs: int, timeout: float,
                 active: list[str]) -> Sample:
    path, work_dir = baseline_script(tmp, name, epochs)
    return submit_and_wait(cluster, ["sbatch", "--parsable", str(path)], BASE_NAME, work_dir,
                           lambda j: [work_dir / f"slurm-{j}.out"], timeout, active)


def run_render(cluster: SlurmCluster, tmp: Path, name: str, epochs: int) -> float:
    path, _ = razor_job(tmp, name, epochs)
    cmd = [PYTHON, "-m", "razor.cli", "render", "--slurm", str(path)]
    tic = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm_env(cluster), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=SUBMIT_TIMEOUT)
    seconds = time.monotonic() - tic
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}\nexited with code {proc.returncode}:\n{proc.stderr}")
    return seconds


# ------------------------------------------------------------------------------------ measure


def cancel_and_wait(cluster: SlurmCluster, job_ids: list[str], timeout: float = 60.0) -> None:
    """scancel the jobs and wait (bounded) until each is in a final state; never raises."""
    if not job_ids:
        return
    try:
        cluster.cancel(job_ids)
        for job_id in job_ids:
            cluster.wait_job(job_id, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - cleanup on the way out of another error
        print(f"slurm submit: could not cancel SLURM job(s) {', '.join(job_ids)}: {e}", file=sys.stderr)


def measure(repeat: int = 3, progress: Callable[[str], None] = print, *, warmup: int = 1,
            epochs: int = EPOCHS, timeout: float = 300.0, quiet_timeout: float = QUIET_TIMEOUT,
            keep: Path | None = None) -> Result:
    """``warmup`` untimed pairs, then ``repeat`` alternating pairs (razor first). The runs' files
    (job files, work dirs, logs) go to a temporary folder, or to ``keep``, which is kept."""
    cluster = SlurmCluster()
    try:
        cluster.start()
    except SlurmError as e:
        raise BenchError(f"the SLURM test cluster did not start: {e}") from None
    result = Result(epochs, cluster_start=cluster.startup_seconds)
    active: list[str] = []
    last_id: list[int] = []

    def one(run: Callable[..., Sample], name: str) -> Sample:
        waited = wait_idle(cluster)
        if waited > 1.0 and last_id:
            result.notes.append(f"{name}: waited {waited:.1f}s for the queue or the node to be free")
        quiet, busy = wait_quiet(quiet_timeout)
        if not quiet:
            result.notes.append(f"{name}: the CPUs were still {busy:.0%} busy with other work after "
                                f"{quiet_timeout:.0f}s; ran anyway")
            progress(f"slurm submit: {result.notes[-1]}")
        wait_idle(cluster)  # still empty after the quiet wait
        sample = replace(run(cluster, tmp, name, epochs, timeout, active), busy_before=busy)
        if last_id and int(sample.job_id) != last_id[0] + 1:
            result.notes.append(f"{name}: another job was submitted between job {last_id[0]} and "
                                f"job {sample.job_id} (someone else uses the cluster)")
        last_id[:] = [int(sample.job_id)]
        return sample

    with tempfile.TemporaryDirectory(prefix="razor-bench-slurm-") as tmpname:
        try:
            tmp = Path(tmpname)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix="run-", dir=keep)).resolve()
                progress(f"slurm submit: the runs' files are kept in {tmp}")
            for i in range(warmup):
                one(run_razor, f"warmup{i}-razor")
                one(run_baseline, f"warmup{i}-baseline")
                progress(f"slurm submit: warm-up pair {i + 1}/{warmup} done")
            for i in range(repeat):
                ours = one(run_razor, f"run{i}-razor")
                base = one(run_baseline, f"run{i}-baseline")
                result.razor.append(ours)
                result.baseline.append(base)
                wait_quiet(quiet_timeout)
                result.render.append(run_render(cluster, tmp, f"run{i}-render", epochs))
                progress(f"slurm submit {i + 1}/{repeat}: first step razor {ours.first_step:.2f}s "
                         f"baseline {base.first_step:.2f}s (razor − baseline "
                         f"{ours.first_step - base.first_step:+.2f}s); submit command razor "
                         f"{ours.submit:.2f}s baseline {base.submit:.2f}s; job end razor "
                         f"{ours.end:.2f}s baseline {base.end:.2f}s; machine CPU seconds razor "
                         f"{ours.cpu:.1f} baseline {base.cpu:.1f} (iowait {ours.iowait:.1f}, "
                         f"{base.iowait:.1f}; steal {ours.steal:.1f}, {base.steal:.1f}; jobs {ours.job_id}, "
                         f"{base.job_id})")
        except BaseException:
            # Inside the with: the folder goes only once no job of ours writes into it.
            cancel_and_wait(cluster, active)
            raise
    return result


# ------------------------------------------------------------------------------------ report


def table(r: Result) -> str:
    """Markdown: medians (min–max) in seconds, razor − baseline of the medians, the target."""
    rows = ["| measure | razorctl submit --slurm | hand-written sbatch | razor − baseline | target | |",
            "|---|---|---|---|---|---|"]
    for label, attr, target in (("submit command wall time (s)", "submit", False),
                                ("submit → first optimizer step (s)", "first_step", True),
                                ("submit → job end (s)", "end", False)):
        d = r.diff(attr)
        goal = f"| ≤ {TARGET:g} s | {verdict(d <= TARGET)} |" if target else "| | |"
        rows.append(f"| {label} | {spread([getattr(s, attr) for s in r.razor])} "
                    f"| {spread([getattr(s, attr) for s in r.baseline])} | {d:+.2f} s {goal}")
    ours, base = min(s.first_step for s in r.razor), min(s.first_step for s in r.baseline)
    rows.append(f"| submit → first optimizer step, the fastest run of each side (s) | {ours:.2f} "
                f"| {base:.2f} | {ours - base:+.2f} s | | |")
    ours, base = r.unqueued("razor"), r.unqueued("baseline")
    if ours and base:
        rows.append(f"| submit → first step, less the scheduler's wait (s) | {spread(ours)} "
                    f"| {spread(base)} | {median(ours) - median(base):+.2f} s | | |")
    for key, label in STAGES:
        ours, base = r.stage("razor", key), r.stage("baseline", key)
        if ours and base:
            rows.append(f"| of submit → first step: {label} (s) | {spread(ours)} | {spread(base)} "
                        f"| {median(ours) - median(base):+.2f} s | | |")
    rows.append(f"| `razorctl render --slurm` of the same job (s) | {spread(r.render)} | | | | |")
    for label, attr in (("CPU seconds the whole machine used, submit → job end", "cpu"),
                        ("CPU seconds idle waiting for I/O in that span", "iowait"),
                        ("CPU seconds the hypervisor took (steal) in that span", "steal")):
        rows.append(f"| {label} | {spread([getattr(s, attr) for s in r.razor], '{:.1f}')} "
                    f"| {spread([getattr(s, attr) for s in r.baseline], '{:.1f}')} "
                    f"| {r.diff(attr):+.1f} s | | |")
    rows.append(f"| machine's CPUs busy in the {QUIET_WINDOW:g} s before the submit (%) "
                f"| {spread([100 * s.busy_before for s in r.razor], '{:.0f}')} "
                f"| {spread([100 * s.busy_before for s in r.baseline], '{:.0f}')} | | | |")
    return "\n".join(rows) + "\n"


def notes(r: Result) -> str:
    """What the numbers say, from the numbers."""
    d = r.diff("first_step")
    text = (f"{outcome(r.met)}: razorctl reaches the first optimizer step {d:+.2f} s after the hand-written "
            f"script (medians of {len(r.razor)} alternating pairs). Its submit command takes "
            f"{r.diff('submit'):.2f} s more than a bare `sbatch --parsable`: one Python start-up of "
            f"razorctl (importing razor and pydantic, validating the RazorJob, loading the config "
            f"and checking cfgOptions: `razorctl render --slurm` alone takes {median(r.render):.2f} s), "
            f"then writing the script and calling sbatch.")
    if all(r.stage(side, k) for side in ("razor", "baseline") for k, _ in STAGES):
        delta = {k: median(r.stage("razor", k)) - median(r.stage("baseline", k)) for k, _ in STAGES}
        unq = median(r.unqueued("razor")) - median(r.unqueued("baseline"))
        text += (f" From slurmctld's and slurmd's logs, razor − baseline by stage: until slurmctld "
                 f"accepted the job {delta['accept']:+.2f} s (razorctl's start-up); the scheduler's "
                 f"wait {delta['sched']:+.2f} s (SLURM's own scheduling passes, bf_interval=1 s and "
                 f"sched_interval=2 s here: the same for both sides, but jittery, "
                 f"{spread(r.stage('razor', 'sched'))} s and {spread(r.stage('baseline', 'sched'))} s); "
                 f"the batch script's own steps before `srun` {delta['script']:+.2f} s (razor's "
                 f"exports, `scontrol show hostnames`, `mkdir`, `echo`); `srun` step launch to the first "
                 f"step {delta['train']:+.2f} s (razor runs `bash -c` and `python -m razor.node`, with "
                 f"its port check, before torchrun, and passes `--resume auto`; the rest is torchrun "
                 f"and the trainer's start-up, the same on both sides and most of the time). Less the "
                 f"scheduler's wait, razor − baseline is {unq:+.2f} s.")
    if len(r.razor) < 3:
        text += " With fewer than 3 pairs the medians are rough."
    best = min(s.first_step for s in r.razor) - min(s.first_step for s in r.baseline)
    text += (f" Other work on the machine only ever adds time, so the fastest run of each side is the "
             f"steadier comparison on a shared machine: razor − baseline {best:+.2f} s.")
    if r.disturbed():
        text += (" The machine's CPU seconds during a run (the same job every time, so the same "
                 "work) show other work on the machine in: " + "; ".join(r.disturbed()) +
                 "; such runs are slower, by seconds.")
    if r.notes:
        text += " Possibly disturbed: " + "; ".join(r.notes) + "."
    return text + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--repeat", type=int, default=3, help="measured pairs (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs first (default 1)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs per job (default {EPOCHS})")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per job before it is cancelled")
    p.add_argument("--quiet-timeout", type=float, default=QUIET_TIMEOUT,
                   help=f"seconds to wait for quiet CPUs before each run (default {QUIET_TIMEOUT:g})")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the runs' files (job files, work dirs, logs) in a new folder under DIR")
    args = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so a job still in the queue is cancelled on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.repeat < 1 or args.epochs < 1 or args.warmup < 0:
        p.error("--repeat and --epochs must be at least 1, --warmup at least 0")
    result = measure(args.repeat, warmup=args.warmup, epochs=args.epochs, timeout=args.timeout,
                     quiet_timeout=args.quiet_timeout, keep=args.keep)
    print(table(result), end="")
    print()
    print(notes(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
