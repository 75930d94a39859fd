"""razorctl --slurm against a real slurmctld/slurmd: training, two jobs, cancel, requeue, the seed wrapper."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "trainer" / "configs"
DATA = ROOT / "tests" / "data"


def checkpoint_epoch(wd: Path) -> int:
    pointer = wd / "last_checkpoint"
    m = re.match(r"epoch_(\d+)", pointer.read_text()) if pointer.exists() else None
    return int(m.group(1)) if m else 0


def env_of(slurm) -> dict[str, str]:
    env = slurm.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # razorctl's index of the jobs it submitted, beside the cluster rather than in ~/.local/state.
    env["XDG_STATE_HOME"] = str(slurm.slurm_dir / "razorctl-state")
    return env


def razorctl(slurm, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "razor.cli", *args], cwd=cwd, env=env_of(slurm),
                          capture_output=True, text=True, timeout=timeout)


def write(tmp: Path, name: str, **spec) -> Path:
    doc = {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": name},
           "spec": {"slurm": {"partition": "debug"}, **spec}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def submit(slurm, tmp: Path, path: Path) -> str:
    res = razorctl(slurm, "submit", "--slurm", str(path), cwd=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    return re.search(r"as SLURM job (\d+)", res.stdout).group(1)


def wait_phase(slurm, tmp: Path, job_id: str, phases: tuple[str, ...], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = razorctl(slurm, "status", "--slurm", job_id, "-o", "json", cwd=tmp).stdout
        if out.strip() and json.loads(out)["phase"] in phases:
            return json.loads(out)["phase"]
        time.sleep(1)
    raise AssertionError(f"job {job_id} not in {phases} after {timeout}s: {out}")


def test_cpu_training_on_slurm(slurm, tmp_path: Path):
    wd = tmp_path / "wd"
    path = write(tmp_path, "digits", config=str(CONFIGS / "digits_kd.yaml"), nprocPerNode=2, workDir=str(wd),
                 cfgOptions={"schedule.epochs": 4, "algorithm.teacher.epochs": 3})
    job_id = submit(slurm, tmp_path, path)
    res = razorctl(slurm, "wait", "--slurm", job_id, "--timeout", "300", cwd=tmp_path, timeout=360)
    assert res.returncode == 0, res.stdout + (wd / "logs").as_posix()
    assert f"SLURM job {job_id}: Succeeded" in res.stdout
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["accuracy"] > 0.8
    assert (wd / "epoch_4.pth").exists() and (wd / "last_checkpoint").exists()
    node0 = wd / "logs" / f"digits-{job_id}-node0.out"
    assert "student accuracy" in node0.read_text()
    assert f"razor: job {job_id} attempt 1" in (wd / "logs" / f"digits-{job_id}.out").read_text()
    logs = razorctl(slurm, "logs", "--slurm", job_id, "--rank", "0", cwd=tmp_path)
    assert "student accuracy" in logs.stdout


def test_two_jobs_at_once_on_one_node_use_different_ports(slurm, tmp_path: Path):
    ids = []
    for name in ("one", "two"):
        path = write(tmp_path, name, config=str(CONFIGS / "digits_mlp.yaml"), port="auto",
                     workDir=str(tmp_path / name), cfgOptions={"schedule.epochs": 3},
                     slurm={"partition": "debug", "cpusPerTask": 1})
        ids.append(submit(slurm, tmp_path, path))
    for job_id in ids:
        assert wait_phase(slurm, tmp_path, job_id, ("Succeeded", "Failed")) == "Succeeded"
    ports = [re.search(r"rendezvous \S+:(\d+)", (tmp_path / n / "logs" / f"{n}-{i}.out").read_text()).group(1)
             for n, i in zip(("one", "two"), ids)]
    assert ports[0] != ports[1]


def test_cancel(slurm, tmp_path: Path):
    path = write(tmp_path, "long", config=str(CONFIGS / "digits_mlp.yaml"), workDir=str(tmp_path / "wd"),
                 cfgOptions={"schedule.epochs": 100000})
    job_id = submit(slurm, tmp_path, path)
    wait_phase(slurm, tmp_path, job_id, ("Running",))
    res = razorctl(slurm, "cancel", "--slurm", job_id, cwd=tmp_path)
    assert res.returncode == 0 and f"SLURM job {job_id} cancelled" in res.stdout
    assert wait_phase(slurm, tmp_path, job_id, ("Failed",)) == "Failed"
    res = razorctl(slurm, "status", "--slurm", job_id, cwd=tmp_path)
    assert f"SLURM job {job_id}: Failed (CANCELLED" in res.stdout  # razor.policy's phases; SLURM's state
    assert "attempt:  1, restarts: 0 (counted 0, disruptions 0)" in res.stdout, "cancelled, never requeued"


def test_requeue_resumes_from_the_checkpoint(slurm, tmp_path: Path):
    wd = tmp_path / "wd"
    path = write(tmp_path, "requeue", config=str(CONFIGS / "digits_mlp.yaml"), workDir=str(wd),
                 cfgOptions={"schedule.epochs": 100000})
    job_id = submit(slurm, tmp_path, path)
    deadline = time.monotonic() + 240
    while checkpoint_epoch(wd) < 3:  # old checkpoints are pruned: read the pointer
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job_id], env=env_of(slurm), check=True, timeout=60)
    deadline = time.monotonic() + 300
    log = wd / "logs" / f"requeue-{job_id}-node0.out"
    while True:
        text = log.read_text() if log.exists() else ""
        if "resumed from" in text:
            break
        assert time.monotonic() < deadline, f"no resume after requeue: {text[-2000:]}"
        time.sleep(1)
    assert re.search(r"resumed from \S+epoch_\d+(_iter_\d+)?\.pth", text)
    subprocess.run(["scancel", job_id], env=env_of(slurm), timeout=60)


def test_hostile_strings_run_nothing(slurm, tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}); `touch {marker}` ' \" ; touch {marker}"
    path = write(tmp_path, "evil", script=str(DATA / "check_env.py"), args=[evil], workDir=str(tmp_path / "wd"),
                 env={"EVIL": evil}, slurm={"partition": "debug", "srunArgs": [f"--comment={evil}"]})
    job_id = submit(slurm, tmp_path, path)
    wait_phase(slurm, tmp_path, job_id, ("Succeeded", "Failed"))
    assert not marker.exists()
    record = json.loads((tmp_path / "wd" / "rank0.json").read_text())
    assert record["args"] == [evil]


def test_seed_slurm_train_wrapper(slurm, tmp_path: Path):
    res = subprocess.run(
        ["sh", str(ROOT / "tools" / "slurm_train.sh"), "debug", "Seed_Job", str(CONFIGS / "digits_mlp.yaml"),
         str(tmp_path / "seed_wd"), "--cfg-options", "schedule.epochs=2"],
        cwd=tmp_path, env={**env_of(slurm), "GPUS": "2", "GPUS_PER_NODE": "0", "CPUS_PER_TASK": "1",
                           "PYTHON": sys.executable}, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(1 node(s) x 2 process(es))" in res.stdout and "Succeeded" in res.stdout
    assert json.loads((tmp_path / "seed_wd" / "summary.json").read_text())["world_size"] == 2


def test_usr2_before_the_time_limit_checkpoints_requeues_and_resumes(slurm, tmp_path: Path):
    """What --signal=USR2@<grace> does near the time limit, sent now with scancel --signal."""
    wd = tmp_path / "wd"
    path = write(tmp_path, "preempt", config=str(CONFIGS / "digits_mlp.yaml"), workDir=str(wd),
                 cfgOptions={"schedule.epochs": 100000, "runtime.stop_check_interval": 5})
    job_id = submit(slurm, tmp_path, path)
    deadline = time.monotonic() + 240
    while checkpoint_epoch(wd) < 2:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env_of(slurm), check=True, timeout=60)
    batch_log = wd / "logs" / f"preempt-{job_id}.out"
    node_log = wd / "logs" / f"preempt-{job_id}-node0.out"
    deadline = time.monotonic() + 300
    while "resumed from" not in (node_log.read_text() if node_log.exists() else ""):
        assert time.monotonic() < deadline, (batch_log.read_text() if batch_log.exists() else "")[-2000:]
        time.sleep(1)
    text = batch_log.read_text()
    assert re.search(r"razor: rank 0 \(\S+\) exited with code 75: stopped on a signal \(checkpoint saved\); "
                     r"restarting all 1 rank\(s\) as attempt 2 \(a disruption: not counted against backoffLimit\)",
                     text), text
    assert f"razor: job {job_id} attempt 2" in text
    assert "stopping on SIGUSR2" in node_log.read_text()
    res = razorctl(slurm, "status", "--slurm", job_id, cwd=tmp_path)
    assert "attempt:  2, restarts: 1 (counted 0, disruptions 1)" in res.stdout, res.stdout
    subprocess.run(["scancel", job_id], env=env_of(slurm), timeout=60)
