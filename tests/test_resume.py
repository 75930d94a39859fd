"""Resume where machines do not share a disk, a longer schedule on resume, and one job per work dir.

Real torchrun processes on CPU. Each "machine" is a folder of its own that its node runs in, with
the work dir given relative to it (``--work-dir wd``), so that no node sees another's files: only
rank 0 writes checkpoints, and the ranks must still agree on what they resume from.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, ROOT, env_for_tests
from razor.node import kill_tree  # the node, its torchrun and the workers (each in a session of its own)

pytestmark = pytest.mark.local

MLP = str(CONFIGS / "digits_mlp.yaml")
DIST_TRAIN = str(ROOT / "tools" / "dist_train.sh")
TRAIN_PY = str(ROOT / "tools" / "train.py")
#: A hang (ranks waiting in a collective for a peer that went elsewhere) fails the test, bounded.
NODE_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Machines:
    """Nodes of one job started with the seed's ``tools/dist_train.sh``, each in its own folder."""

    def __init__(self, root: Path, nnodes: int = 2):
        self.root, self.nnodes = root, nnodes
        self.dirs = [root / f"machine{r}" for r in range(nnodes)]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def wd(self, rank: int = 0) -> Path:
        return self.dirs[rank] / "wd"

    def start(self, *args: str, job: str | None = None, config: str = MLP) -> list[subprocess.Popen]:
        port = str(free_port())
        procs = []
        for rank, cwd in enumerate(self.dirs):
            env = {**env_for_tests(), "PYTHON": sys.executable, "NNODES": str(self.nnodes),
                   "NODE_RANK": str(rank), "PORT": port, "MASTER_ADDR": "127.0.0.1",
                   "CUDA_VISIBLE_DEVICES": "-1", "OMP_NUM_THREADS": "1"}
            env.pop("RAZOR_JOB_NAME", None)
            if job:
                env["RAZOR_JOB_NAME"] = job
            procs.append(subprocess.Popen(
                ["sh", DIST_TRAIN, config, "1", "--work-dir", "wd", *args], cwd=cwd, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
        return procs

    @staticmethod
    def finish(procs: list[subprocess.Popen], timeout: float = NODE_TIMEOUT) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        results: list[tuple[int, str]] = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                results.append((proc.returncode, out))
        except subprocess.TimeoutExpired:
            outs = []
            for proc in procs:
                kill_tree(proc.pid)
                outs.append(proc.communicate()[0][-3000:])
            raise AssertionError(f"the nodes did not finish within {timeout:g}s (a rank hangs):\n"
                                 + "\n----\n".join(outs)) from None
        return results

    def run(self, *args: str, job: str | None = None, config: str = MLP,
            timeout: float = NODE_TIMEOUT) -> list[tuple[int, str]]:
        return self.finish(self.start(*args, job=job, config=config), timeout)


def ok(results: list[tuple[int, str]]) -> str:
    assert [rc for rc, _ in results] == [0] * len(results), "\n----\n".join(out for _, out in results)
    return results[0][1]


def summary(wd: Path) -> dict:
    return json.loads((wd / "summary.json").read_text())


def metrics(wd: Path) -> list[dict]:
    return [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines() if line.strip()]


def checkpoints(wd: Path) -> list[str]:
    return sorted(p.name for p in wd.glob("*.pth")) if wd.is_dir() else []


def train_py(cwd: Path, *args: str, job: str | None = None, timeout: float = NODE_TIMEOUT):
    env = {**env_for_tests(), "CUDA_VISIBLE_DEVICES": "-1", "OMP_NUM_THREADS": "1"}
    env.pop("RAZOR_JOB_NAME", None)
    if job:
        env["RAZOR_JOB_NAME"] = job
    return subprocess.run([sys.executable, TRAIN_PY, MLP, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- 1. resume, own disks


def test_resume_without_a_shared_work_dir_is_exact(tmp_path: Path):
    """Rank 0 alone holds the checkpoint; a stopped run started again resumes on every rank from
    it, to the very weights of the run nobody stopped (dropout on: the RNG state matters too)."""
    opts = ["--cfg-options", "schedule.epochs=40", "model={type: mlp, hidden: [64], dropout: 0.2}",
            "runtime.stop_check_interval=2", "dist_params.timeout=60"]
    whole = Machines(tmp_path / "whole")
    ok(whole.run(*opts))
    expected = summary(whole.wd())["weights_digests"]

    m = Machines(tmp_path / "stopped")
    procs = m.start(*opts)
    deadline = time.monotonic() + NODE_TIMEOUT
    while not (m.wd() / "epoch_2.pth").exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            Machines.finish(procs, 5)
            raise AssertionError("no epoch_2.pth on rank 0's machine")
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    results = Machines.finish(procs)
    assert [rc for rc, _ in results] == [75, 75], results
    assert checkpoints(m.wd(1)) == [], "only rank 0 writes checkpoints"
    stopped_at = (m.wd() / "last_checkpoint").read_text().strip()
    assert stopped_at != "epoch_40.pth"

    out = ok(m.run(*opts))
    assert f"resumed from wd/{stopped_at}" in out
    assert checkpoints(m.wd(1)) == []
    assert summary(m.wd())["weights_digests"] == expected, "resume must be exact on every rank"
    assert [r["epoch"] for r in metrics(m.wd())] == list(range(1, 41))


def test_explicit_checkpoint_only_rank_0_can_read(tmp_path: Path):
    """``--resume wd/epoch_2.pth`` names a file on rank 0's machine only: rank 0 reads it and the
    others get its state, instead of failing on a path they do not have."""
    m = Machines(tmp_path)
    ok(m.run("--cfg-options", "schedule.epochs=2", "dist_params.timeout=60"))
    out = ok(m.run("--resume", "wd/epoch_2.pth", "--cfg-options", "schedule.epochs=3",
                   "dist_params.timeout=60"))
    assert "resumed from wd/epoch_2.pth (epoch 2)" in out
    assert [r["epoch"] for r in metrics(m.wd())] == [1, 2, 3]
    assert len(set(summary(m.wd())["weights_digests"])) == 1


def test_a_bad_explicit_checkpoint_stops_every_rank_at_once(tmp_path: Path):
    m = Machines(tmp_path)
    started = time.monotonic()
    results = m.run("--resume", "wd/nope.pth", "--cfg-options", "schedule.epochs=2", timeout=120)
    # Each trainer exits 2; torchrun reports a failed worker as 1.
    assert all(rc != 0 for rc, _ in results), results
    assert "razor_trainer: error: --resume 'wd/nope.pth': no such checkpoint" in results[0][1]
    assert time.monotonic() - started < 100


def test_knowledge_distillation_resumes_teacher_and_student_without_a_shared_work_dir(tmp_path: Path):
    """The teacher's checkpoints are on rank 0's machine too: every rank skips the trained teacher
    and resumes the student, instead of rank 1 training a teacher of its own."""
    kd = str(CONFIGS / "digits_kd.yaml")
    m = Machines(tmp_path)
    opts = ["algorithm.teacher.epochs=2", "model.hidden=[16]", "dist_params.timeout=60"]
    ok(m.run("--cfg-options", "schedule.epochs=1", *opts, config=kd))
    assert checkpoints(m.wd(1) / "teacher") == []
    out = ok(m.run("--cfg-options", "schedule.epochs=2", *opts, config=kd))
    assert "[teacher] resumed from wd/teacher/epoch_2.pth (epoch 2)" in out
    assert "[teacher] already trained for 2 epochs" in out
    assert "[student] resumed from wd/epoch_1.pth (epoch 1)" in out
    assert [(r["stage"], r["epoch"]) for r in metrics(m.wd())] == [
        ("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2)]


# ----------------------------------------------------------------------------- 2. a longer schedule


def test_a_longer_schedule_on_resume_continues_the_new_schedule(tmp_path: Path):
    """2 epochs, then the same run as 4 epochs: epochs 3-4 follow the 4-epoch cosine schedule,
    not the old one that ended at lr 0."""
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=2")
    assert res.returncode == 0, res.stdout + res.stderr
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=4")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed from wd/epoch_2.pth (epoch 2)" in res.stdout
    assert ("schedule changed since the checkpoint (cosine over 2 epochs -> cosine over 4 epochs): "
            "the learning rate follows the new schedule from epoch 3") in res.stdout
    lrs = {r["epoch"]: r["lr"] for r in metrics(tmp_path / "wd")}
    base = 0.05  # 0.4 for 8 GPUs x 32, scaled to 1 process
    for epoch in (3, 4):
        want = base * (1 + math.cos(math.pi * (epoch - 1) / 4)) / 2
        assert lrs[epoch] == pytest.approx(want, rel=1e-6), lrs
    state = torch.load(tmp_path / "wd" / "epoch_4.pth", weights_only=False)
    assert state["scheduler"]["T_max"] == 4 and state["meta"]["epochs"] == 4


def test_the_same_schedule_on_resume_keeps_the_checkpoints(tmp_path: Path):
    """A step schedule whose milestones do not move keeps the restored state (no message)."""
    step = "lr_scheduler: step, milestones: [1], gamma: 0.5"
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", f"schedule={{epochs: 2, {step}}}")
    assert res.returncode == 0, res.stdout + res.stderr
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", f"schedule={{epochs: 3, {step}}}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "schedule changed" not in res.stdout
    assert [r["lr"] for r in metrics(tmp_path / "wd")] == pytest.approx([0.05, 0.025, 0.025])


# ----------------------------------------------------------------------------- 3. one job, one work dir


def owner(wd: Path) -> dict:
    return json.loads((wd / "razor-workdir.json").read_text())


def test_another_job_in_the_same_work_dir_is_refused(tmp_path: Path):
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=2", job="first")
    assert res.returncode == 0, res.stdout + res.stderr
    assert owner(tmp_path / "wd")["job"] == "first"
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=3", job="second")
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr
    assert "razor_trainer: error: work dir wd belongs to job 'first'" in err, err
    assert "not to job 'second'" in err and "--work-dir" in err and "--resume wd/epoch_2.pth" in err
    assert "Traceback" not in err
    assert checkpoints(tmp_path / "wd") == ["epoch_1.pth", "epoch_2.pth"], "nothing of the first job lost"
    # The first job itself resumes as before.
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=3", job="first")
    assert res.returncode == 0 and "resumed from wd/epoch_2.pth" in res.stdout, res.stdout + res.stderr
    # A checkpoint from elsewhere does not ask for this work dir: still refused.
    (tmp_path / "elsewhere.pth").write_bytes((tmp_path / "wd" / "epoch_3.pth").read_bytes())
    res = train_py(tmp_path, "--work-dir", "wd", "--resume", "elsewhere.pth",
                   "--cfg-options", "schedule.epochs=4", job="second")
    assert res.returncode == 2 and "belongs to job 'first'" in res.stderr, res.stdout + res.stderr
    # Asking for it explicitly: the second job continues the first's training and owns the dir.
    res = train_py(tmp_path, "--work-dir", "wd", "--resume", "wd/epoch_3.pth",
                   "--cfg-options", "schedule.epochs=4", job="second")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed from wd/epoch_3.pth (epoch 3)" in res.stdout
    assert "work dir wd: job 'second' takes it over from job 'first'" in res.stdout
    assert owner(tmp_path / "wd")["job"] == "second"


def test_another_model_in_the_same_work_dir_is_refused(tmp_path: Path):
    """The examples cpu-debug (an MLP) and digits-gpu (a CNN) share work_dirs/digits_mlp."""
    res = train_py(tmp_path, "--cfg-options", "schedule.epochs=1", job="cpu-debug")
    assert res.returncode == 0, res.stdout + res.stderr
    cnn = ["model={type: cnn, channels: [4]}", "schedule.epochs=1"]
    for job in ("digits-gpu", "cpu-debug"):
        res = train_py(tmp_path, "--cfg-options", *cnn, job=job)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "razor_trainer: error: work dir work_dirs/digits_mlp holds job 'cpu-debug'" in res.stderr
        assert '"type": "mlp"' in res.stderr and '"type": "cnn"' in res.stderr and "--work-dir" in res.stderr
        assert "Traceback" not in res.stderr
    # An explicit checkpoint of another model is refused as plainly.
    res = train_py(tmp_path, "--work-dir", "other", "--resume", "work_dirs/digits_mlp/epoch_1.pth",
                   "--cfg-options", *cnn, job="digits-gpu")
    assert res.returncode == 2, res.stdout + res.stderr
    assert ("--resume 'work_dirs/digits_mlp/epoch_1.pth': the checkpoint is of another model"
            in res.stderr), res.stderr


def test_a_work_dir_from_before_is_judged_by_its_checkpoint(tmp_path: Path):
    """A work dir written before razor-workdir.json existed: its checkpoint's config says whose it is."""
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=1")
    assert res.returncode == 0, res.stdout + res.stderr
    (tmp_path / "wd" / "razor-workdir.json").unlink()
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "model.hidden=[32]", "schedule.epochs=2")
    assert res.returncode == 2 and "holds checkpoints of another model" in res.stderr, res.stdout + res.stderr
    res = train_py(tmp_path, "--work-dir", "wd", "--cfg-options", "schedule.epochs=2")
    assert res.returncode == 0 and "resumed from wd/epoch_1.pth" in res.stdout, res.stdout + res.stderr


def test_the_seeds_train_py_without_a_job_name_resumes_as_before(tmp_path: Path):
    for epochs in (1, 2):
        res = train_py(tmp_path, "--cfg-options", f"schedule.epochs={epochs}")
        assert res.returncode == 0, res.stdout + res.stderr
    assert "resumed from work_dirs/digits_mlp/epoch_1.pth (epoch 1)" in res.stdout
    record = owner(tmp_path / "work_dirs" / "digits_mlp")
    assert record["job"] is None and record["model"] == {"type": "mlp", "hidden": [64]}


def test_a_refused_job_stops_every_node_at_once(tmp_path: Path):
    """The refusal is rank 0's decision: every node stops at once, none waits in a collective."""
    m = Machines(tmp_path)
    ok(m.run("--cfg-options", "schedule.epochs=1", "dist_params.timeout=60", job="first"))
    assert not (m.wd(1) / "razor-workdir.json").exists(), "rank 0's machine alone records the owner"
    started = time.monotonic()
    results = m.run("--cfg-options", "schedule.epochs=2", job="second", timeout=120)
    assert all(rc != 0 for rc, _ in results), results  # each trainer exits 2 (torchrun says 1)
    assert "error: work dir wd belongs to job 'first'" in results[0][1]
    assert "Traceback" not in results[0][1].split("razor_trainer: error:")[0]
    assert time.monotonic() - started < 100
    assert (m.wd() / "razor-workdir.json").exists() and checkpoints(m.wd()) == ["epoch_1.pth"]
