"""The test cluster itself (scripts/slurm-setup.sh): batch jobs, scancel, requeue, two jobs side by
side, srun inside sbatch, and a second start that finds the cluster running.

These check what the razor SLURM backend relies on, without razor. Every wait is bounded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster


def batch_script(path: Path, body: str, *sbatch: str) -> Path:
    """A bash batch script with ``#SBATCH`` lines and ``body``."""
    lines = ["#!/bin/bash", *(f"#SBATCH {opt}" for opt in sbatch), body.strip(), ""]
    path.write_text("\n".join(lines))
    return path


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {timeout}s: {content!r}"
        time.sleep(0.2)


def test_sbatch_runs_to_completed_and_writes_its_output(slurm: SlurmCluster, tmp_path: Path):
    out = tmp_path / "logs" / "hello-%j.out"
    out.parent.mkdir()
    script = batch_script(tmp_path / "hello.sh", 'echo "hello from job $SLURM_JOB_ID"',
                          "--job-name=hello", f"--output={out}")
    job_id = slurm.sbatch(script, cwd=tmp_path)
    assert slurm.wait_job(job_id, timeout=60) == "COMPLETED"
    rec = slurm.job(job_id)
    assert rec is not None and rec["ExitCode"] == "0:0" and rec["JobName"] == "hello"
    assert rec["Partition"] == "debug"
    text = (tmp_path / "logs" / f"hello-{job_id}.out").read_text()
    assert text == f"hello from job {job_id}\n"


def test_scancel_ends_a_running_job_as_cancelled(slurm: SlurmCluster, tmp_path: Path):
    pid_file = tmp_path / "pid"
    script = batch_script(tmp_path / "sleep.sh", f"echo $$ > {pid_file}\nsleep 300",
                          f"--output={tmp_path / 'sleep.out'}")
    job_id = slurm.sbatch(script, cwd=tmp_path)
    assert slurm.wait_job(job_id, timeout=60, states={"RUNNING"}) == "RUNNING"
    pid = int(wait_for_text(pid_file, "\n", timeout=30))
    slurm.run("scancel", job_id)
    assert slurm.wait_job(job_id, timeout=60) == "CANCELLED"
    # KillWait=5: the batch script is gone (SIGTERM, then SIGKILL) well within 30 s.
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the cancelled job's script (pid {pid}) still runs"
        time.sleep(0.2)


def test_requeue_runs_the_job_again(slurm: SlurmCluster, tmp_path: Path):
    out = tmp_path / "requeue.out"
    # --open-mode=append keeps the first run's lines when the job starts again.
    script = batch_script(tmp_path / "requeue.sh",
                          'echo "run restart=${SLURM_RESTART_COUNT:-0}"\nsleep 300',
                          f"--output={out}", "--open-mode=append")
    job_id = slurm.sbatch(script, cwd=tmp_path)
    wait_for_text(out, "run restart=0", timeout=60)
    rec = slurm.job(job_id)
    assert rec is not None and rec["Requeue"] == "1" and rec["Restarts"] == "0"   # JobRequeue=1
    slurm.run("scontrol", "requeue", job_id)
    # Started again once AuthInfo's cred_expire (10 s here) has passed.
    text = wait_for_text(out, "run restart=1", timeout=90)
    assert text.count("run restart=") == 2
    rec = slurm.wait_until(job_id, lambda r: r["JobState"] == "RUNNING" and r["Restarts"] == "1",
                           timeout=30, what="RUNNING with Restarts=1")
    slurm.run("scancel", job_id)
    assert slurm.wait_job(job_id, timeout=60) == "CANCELLED"


def test_two_one_cpu_jobs_run_at_the_same_time(slurm: SlurmCluster, tmp_path: Path):
    cpus = int(slurm.run("sinfo", "-h", "-o", "%c").stdout.split()[0])
    if cpus < 2:
        pytest.skip(f"the node has {cpus} CPU")
    # Each job marks that it started and then waits (bounded) for the other's mark: both complete
    # only if both ran at once.
    ids = []
    for me, other in (("a", "b"), ("b", "a")):
        body = (f"touch {tmp_path / me}.started\n"
                f"for i in $(seq 1 300); do [ -e {tmp_path / other}.started ] && exit 0; sleep 0.2; done\n"
                "echo 'the other job never started' >&2; exit 1")
        script = batch_script(tmp_path / f"{me}.sh", body, "--ntasks=1", "--cpus-per-task=1",
                              f"--output={tmp_path / me}.out")
        ids.append(slurm.sbatch(script, cwd=tmp_path))
    states = [slurm.wait_job(job_id, timeout=90) for job_id in ids]
    assert states == ["COMPLETED", "COMPLETED"], [(tmp_path / f"{n}.out").read_text() for n in "ab"]
    nodes = {slurm.job(job_id)["NodeList"] for job_id in ids}
    assert len(nodes) == 1   # side by side on the one node


def test_srun_inside_sbatch(slurm: SlurmCluster, tmp_path: Path):
    out = tmp_path / "srun.out"
    script = batch_script(tmp_path / "srun.sh",
                          "srun hostname\n"
                          "srun --ntasks=1 bash -c 'echo step=$SLURM_STEP_ID node=$SLURM_NODEID "
                          "nodes=$SLURM_JOB_NODELIST'",
                          f"--output={out}")
    job_id = slurm.sbatch(script, cwd=tmp_path)
    assert slurm.wait_job(job_id, timeout=60) == "COMPLETED", out.read_text()
    node = slurm.job(job_id)["NodeList"]
    lines = out.read_text().splitlines()
    assert lines[0] == os.uname().nodename.split(".")[0]
    assert lines[1] == f"step=1 node=0 nodes={node}"


def test_setup_again_keeps_the_running_cluster(slurm: SlurmCluster):
    run_dir = slurm.slurm_dir / "run"
    before = {p.name: p.read_text().strip() for p in run_dir.glob("*.pid")}
    assert "slurmctld.pid" in before and any(n.startswith("slurmd") for n in before)
    again = SlurmCluster(slurm_dir=slurm.slurm_dir).start()
    assert again.conf == slurm.conf
    after = {p.name: p.read_text().strip() for p in run_dir.glob("*.pid")}
    assert after == before
    for name, pid in after.items():
        assert Path(f"/proc/{pid}").exists(), f"{name}: pid {pid} not running"
    assert set(slurm.node_states().values()) <= {"idle", "mixed", "allocated", "completing"}
