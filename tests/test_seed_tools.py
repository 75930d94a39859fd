"""The seed's own commands keep working: tools/train.py on CPU, tools/dist_train.sh on two "machines"."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, ROOT, env_for_tests

pytestmark = pytest.mark.local
MLP = str(CONFIGS / "digits_mlp.yaml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**env_for_tests(), "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_train_py_on_cpu_like_the_seed(tmp_path: Path):
    # export CUDA_VISIBLE_DEVICES=-1; python tools/train.py ${CONFIG_FILE}
    res = run([sys.executable, str(ROOT / "tools" / "train.py"), MLP,
               "--cfg-options", "schedule.epochs=2"], cwd=tmp_path, CUDA_VISIBLE_DEVICES="-1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "on 1 process(es), cpu (single process); work dir work_dirs/digits_mlp" in res.stdout
    assert "lr 0.4 -> 0.05 (8 -> 1 GPUs" in res.stdout
    wd = tmp_path / "work_dirs" / "digits_mlp"      # named after the config file, as the seed says
    assert (wd / "epoch_2.pth").exists() and (wd / "summary.json").exists()


def test_train_py_bad_option_is_a_clear_error(tmp_path: Path):
    res = run([sys.executable, str(ROOT / "tools" / "train.py"), MLP, "--cfg-options", "optimizer.lrr=0.1"],
              cwd=tmp_path, CUDA_VISIBLE_DEVICES="-1")
    assert res.returncode == 2
    assert "razor_trainer: error: --cfg-options optimizer.lrr: the config has no key 'lrr'" in res.stderr
    assert "Traceback" not in res.stderr


def test_dist_train_on_two_machines_with_node_rank(tmp_path: Path):
    # NNODES=2 NODE_RANK=0|1 PORT=$MASTER_PORT MASTER_ADDR=$MASTER_ADDR sh tools/dist_train.sh $CONFIG $GPUS
    port = str(free_port())
    wd = tmp_path / "two_machines"
    cmd = ["sh", str(ROOT / "tools" / "dist_train.sh"), MLP, "1", "--work_dir", str(wd),
           "--cfg-options", "schedule.epochs=3"]
    env = {**env_for_tests(), "PYTHON": sys.executable, "NNODES": "2", "PORT": port,
           "MASTER_ADDR": "127.0.0.1", "CUDA_VISIBLE_DEVICES": "-1", "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env={**env, "NODE_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert "on 2 process(es), cpu (gloo)" in outs[0]
    s = json.loads((wd / "summary.json").read_text())
    assert s["world_size"] == 2 and len(set(s["weights_digests"])) == 1


def test_dist_train_port_in_use_is_said_plainly(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = str(sock.getsockname()[1])
        res = run(["sh", str(ROOT / "tools" / "dist_train.sh"), MLP, "1"], cwd=tmp_path, PORT=port,
                  CUDA_VISIBLE_DEVICES="-1")
    assert res.returncode != 0
    assert f"MASTER_PORT {port} is already in use on this machine" in res.stderr


def test_dist_train_usage(tmp_path: Path):
    res = run(["sh", str(ROOT / "tools" / "dist_train.sh"), MLP], cwd=tmp_path)
    assert res.returncode == 2 and "usage: sh tools/dist_train.sh CONFIG GPUS" in res.stderr
    res = run(["sh", str(ROOT / "tools" / "dist_train.sh"), MLP, "four"], cwd=tmp_path)
    assert res.returncode == 2 and "GPUS must be a whole number" in res.stderr


def test_launcher_slurm_reads_slurms_variables(tmp_path: Path):
    # MMRazor-style --launcher slurm: one srun task per process, ranks from SLURM_PROCID/NTASKS.
    res = run([sys.executable, str(ROOT / "tools" / "train.py"), MLP, "--launcher", "slurm",
               "--work-dir", str(tmp_path / "wd"), "--cfg-options", "schedule.epochs=1",
               f"dist_params.port={free_port()}"],
              cwd=tmp_path, SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0",
              MASTER_ADDR="127.0.0.1", CUDA_VISIBLE_DEVICES="-1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "on 1 process(es), cpu (gloo)" in res.stdout
    res = run([sys.executable, str(ROOT / "tools" / "train.py"), MLP, "--launcher", "slurm"],
              cwd=tmp_path, SLURM_PROCID="0", SLURM_NTASKS="1", CUDA_VISIBLE_DEVICES="-1")
    assert res.returncode == 2
    assert "--launcher slurm outside torchrun needs MASTER_ADDR or SLURM_JOB_NODELIST" in res.stderr

