"""tools/dist_train.sh keeps the whole launcher contract (razor.launcher), from the seed's variables.

The node's python is a stub that records the environment razor.node would get, so nothing trains.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, ROOT, env_for_tests
from razor.launcher import CONTRACT

MLP = str(CONFIGS / "digits_mlp.yaml")
SEED_VARS = ("PORT", "MASTER_PORT", "NNODES", "NODE_RANK", "MASTER_ADDR", "CUDA_VISIBLE_DEVICES", "RAZOR_JOB_NAME")


def run_dist_train(tmp_path: Path, *args: str, **seed: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """sh tools/dist_train.sh ARGS with the seed's variables ``seed``; the environment and the
    arguments that ``python -m razor.node`` gets."""
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\nif [ "$2" = razor.node ]; then env > "$ENV_OUT"; echo "$@" > "$ARGS_OUT"; '
                    f'else exec {sys.executable} "$@"; fi\n')
    stub.chmod(0o755)
    base = {k: v for k, v in env_for_tests().items() if k not in SEED_VARS}
    env = {**base, "PYTHON": str(stub), "ENV_OUT": str(tmp_path / "env"), "ARGS_OUT": str(tmp_path / "args"),
           **seed}
    (tmp_path / "env").unlink(missing_ok=True)
    res = subprocess.run(["sh", str(ROOT / "tools" / "dist_train.sh"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    seen = {}
    if (tmp_path / "env").exists():
        seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    return res, seen


def test_dist_train_sets_every_variable_of_the_contract(tmp_path: Path):
    res, env = run_dist_train(tmp_path, MLP, "2", "--work_dir", "runs/a b", "--cfg-options", "schedule.epochs=3",
                              NNODES="2", NODE_RANK="1", PORT="29601", MASTER_ADDR="host0", CUDA_VISIBLE_DEVICES="-1",
                              RAZOR_PROGRESS_TIMEOUT="30")
    assert res.returncode == 0, res.stderr
    assert {v.name for v in CONTRACT} <= set(env)
    assert env["RAZOR_PROGRESS_TIMEOUT"] == "30"
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "host0"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == env["PORT"] == "29601"
    assert env["NNODES"] == env["PET_NNODES"] == "2"
    assert env["NODE_RANK"] == env["PET_NODE_RANK"] == "1"
    assert env["NPROC_PER_NODE"] == env["PET_NPROC_PER_NODE"] == "2" and env["GPUS_PER_NODE"] == "0"
    # No job: the seed's commands name none (the trainer judges the work dir by its model alone).
    assert (env["RAZOR_JOB_NAME"], env["RAZOR_WORK_DIR"], env["RAZOR_ATTEMPT"]) == ("", "runs/a b", "1")
    assert (env["RAZOR_MASTER_ADDR_TIMEOUT"], env["RAZOR_STOP_GRACE"]) == ("300", "110")
    assert (tmp_path / "args").read_text().split() == [
        "-m", "razor.node", str(ROOT / "tools" / "train.py"), MLP, "--launcher", "pytorch",
        "--work_dir", "runs/a", "b", "--cfg-options", "schedule.epochs=3"]


def test_dist_train_on_gpus_leaves_cuda_visible_devices_alone(tmp_path: Path):
    res, env = run_dist_train(tmp_path, MLP, "4", "--work-dir=wd", CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert res.returncode == 0, res.stderr
    assert env["GPUS_PER_NODE"] == env["NPROC_PER_NODE"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["RAZOR_WORK_DIR"] == "wd" and env["NNODES"] == "1" and env["MASTER_ADDR"] == "127.0.0.1"
    res, env = run_dist_train(tmp_path, MLP, "1")
    assert env["RAZOR_WORK_DIR"] == "work_dirs/digits_mlp" and "CUDA_VISIBLE_DEVICES" not in env


@pytest.mark.parametrize("seed, args, config_port, want", [
    ({"PORT": "29601"}, ["--cfg-options", "dist_params.port=29700"], 29800, "29601"),
    ({"MASTER_PORT": "29602"}, ["--cfg-options", "dist_params.port=29700"], 29800, "29602"),
    ({}, ["--cfg-options", "optimizer.lr=0.1", "dist_params.port=29700"], 29800, "29700"),  # the seed's Option 2
    ({}, [], 29800, "29800"),                                                               # the seed's Option 1
    ({}, [], None, "29500"),
])
def test_dist_train_takes_the_port_by_the_one_port_rule(tmp_path: Path, seed, args, config_port, want):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"_base_": MLP, "dist_params": {"port": config_port}}))
    res, env = run_dist_train(tmp_path, str(config), "1", *args, **seed)
    assert res.returncode == 0, res.stderr
    assert env["PORT"] == env["MASTER_PORT"] == env["PET_MASTER_PORT"] == want


@pytest.mark.parametrize("seed, message", [
    ({"PORT": "http"}, "dist_train.sh: PORT must be a port number (got 'http')"),
    ({"NNODES": "two"}, "dist_train.sh: NNODES must be a whole number (got 'two')"),
])
def test_dist_train_refuses_bad_seed_variables_plainly(tmp_path: Path, seed, message):
    res, env = run_dist_train(tmp_path, MLP, "1", **seed)
    assert res.returncode != 0 and message in res.stderr and not env
    assert "Traceback" not in res.stderr
