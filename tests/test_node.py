"""razor.node: the contract is checked, a master that never resolves is waited for, boundedly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from razor import node

BASE = {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500"}


def test_contract_reads_plain_or_pet_forms_and_slurm_rank():
    assert node.contract(BASE)["NODE_RANK"] == "1"
    pet = {f"PET_{k}": v for k, v in BASE.items()}
    assert node.contract(pet) == BASE
    slurm = {**BASE, "NODE_RANK": "", "SLURM_NODEID": "1"}
    assert node.contract(slurm)["NODE_RANK"] == "1"


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "2"}, "NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT not set"),
    ({**BASE, "NODE_RANK": "2"}, "NODE_RANK 2 is not below NNODES 2"),
    ({**BASE, "MASTER_PORT": "http"}, "MASTER_PORT='http' is not a whole number"),
])
def test_incomplete_contract_is_refused(env, message):
    with pytest.raises(SystemExit, match=message):
        node.contract(env)


def test_master_that_never_resolves_is_a_clear_bounded_error():
    start = time.monotonic()
    with pytest.raises(SystemExit, match="MASTER_ADDR 'razor-test-0.nowhere.invalid' did not resolve within 1s"):
        node.wait_for_master("razor-test-0.nowhere.invalid", timeout=1.0, interval=0.2)
    assert time.monotonic() - start < 30


def test_master_port_in_use_is_said_before_torchrun_starts():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**BASE, "NNODES": "1", "NODE_RANK": "0", "MASTER_PORT": str(port), "PATH": "/usr/bin:/bin"}
        res = subprocess.run([sys.executable, "-m", "razor.node", "train.py"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert f"MASTER_PORT {port} is already in use on this machine" in res.stderr


def test_no_command_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "razor.node"], env=BASE, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "usage: python -m razor.node" in res.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.local
def test_after_its_stop_grace_razor_node_kills_the_training_processes(tmp_path):
    """torchrun starts each worker in a session of its own: killing torchrun's process group alone
    would leave a worker that outlives RAZOR_STOP_GRACE running, an orphan, after the node exits."""
    from conftest import DATA

    env = {**os.environ, **BASE, "NNODES": "1", "NODE_RANK": "0", "MASTER_PORT": str(node_free_port()),
           "RAZOR_STOP_GRACE": "2", "SLOW_STOP": "120", "SLOW_STOP_DIR": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": "-1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "razor.node", str(DATA / "slow_stop.py")], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "node0.json").exists() or not (tmp_path / "node0.json").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        time.sleep(0.2)
        worker = json.loads((tmp_path / "node0.json").read_text())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)  # a surviving worker would hold the pipe open
    finally:
        for pid in [proc.pid, *worker.values()] if proc.poll() is None else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 75, out
    assert "training processes still running 2s after the stop signal; killing them" in out
    assert not (tmp_path / "saved0").exists()
    deadline = time.monotonic() + 10
    while _alive(worker["pid"]) or _alive(worker["child"]):
        assert time.monotonic() < deadline, f"a training process outlived its node: {worker}"
        time.sleep(0.1)


def node_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def test_the_nodes_exit_code_is_its_failed_workers_own():
    """torchrun exits 1 whatever its worker's code: razor.node reports the root cause's."""
    from razor.node import exit_code

    assert exit_code(1, 2) == 2          # a trainer's bad config: permanent by default
    assert exit_code(1, -9) == 137       # SIGKILL (the OOM killer): as a container runtime says it
    assert exit_code(1, None) == 1       # no report (torchrun itself failed)
    assert exit_code(0, None) == 0 and exit_code(-15, None) == 143
