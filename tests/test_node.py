"""razor.node: the contract is checked, a master that never resolves is waited for, boundedly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


# ---- what the node says about its end: the failure's message, stalls, the port race, its output --------

NODE0 = {**BASE, "NNODES": "1", "NODE_RANK": "0"}


def node_env(tmp_path, **extra: str) -> dict[str, str]:
    """One node of 2 CPU processes, its work dir and termination log in ``tmp_path``."""
    return {**os.environ, **NODE0, "NPROC_PER_NODE": "2", "MASTER_PORT": str(node_free_port()),
            "RAZOR_WORK_DIR": str(tmp_path / "w"), "RAZOR_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "CUDA_VISIBLE_DEVICES": "-1", "PYTHONUNBUFFERED": "1", **extra}


def node_end(tmp_path) -> dict:
    return json.loads((tmp_path / "w" / "razor-status" / "node-0.json").read_text())


NANOBIND = (b'nanobind: leaked 4 instances!\n'
            b' - leaked instance 0x7fb7e3a51a68 of type "triton._C.libtriton.ir.attribute"\n'
            b'nanobind: leaked 64 types!\n'
            b' - leaked type "triton._C.libtriton.ir.location"\n'
            b' - ... skipped remainder\n'
            b'nanobind: leaked 514 functions!\n'
            b' - leaked function "create_gather"\n'
            b'nanobind: this is likely caused by a reference counting issue in the binding code.\n'
            # nanobind ends its report without a newline: the next process's report follows on the line.
            b'See https://nanobind.readthedocs.io/en/latest/refleaks.html'
            b'nanobind: leaked 2 types!\n'
            b' - leaked type "ATOMIC_OP"\n'
            b'See https://nanobind.readthedocs.io/en/latest/refleaks.html'
            b'razor-node: the end\n'
            b' - a line of the user\'s own\n'
            b'See https://nanobind.readthedocs.io/en/latest/refleaks.html')


def test_the_leak_report_of_tritons_bindings_is_dropped_and_nothing_else():
    import io

    out = node.TorchrunStderr(io.BytesIO(b"razor: plot w/metrics.png\n" + NANOBIND))
    kept = [out.without_leaks(line) for line in io.BytesIO(b"razor: plot w/metrics.png\n" + NANOBIND)]
    assert b"".join(kept) == b"razor: plot w/metrics.png\nrazor-node: the end\n - a line of the user's own\n"


EXIT_BARRIER = (b"[E1201 07:01:02.345 agent/server/api.py:1007] Error waiting on exit barrier. Elapsed: 0.01 seconds\n"
                b"Traceback (most recent call last):\n"
                b'  File "/v/torch/distributed/elastic/agent/server/api.py", line 993, in _exit_barrier\n'
                b"    store_util.barrier(\n"
                b"torch.distributed.DistNetworkError: failed to recv, got 0 bytes\n")


@pytest.mark.parametrize("succeeded", [True, False])
def test_a_failed_exit_barrier_after_a_success_is_one_line_not_a_traceback(capfd, succeeded: bool):
    """Node 1 of a finished job: the master's agent exits as soon as the last agent reaches the
    barrier, and torch logs the lost store as an error. After a success that is one line of
    razor-node's; after a failure the whole report, as torch wrote it."""
    import io

    out = node.TorchrunStderr(io.BytesIO(b"razor: epoch 3/3\n" + EXIT_BARRIER))
    out.release()
    out.run()
    out.settle(succeeded)
    err = capfd.readouterr().err
    assert err.startswith("razor: epoch 3/3\n")
    if succeeded:
        assert "Traceback" not in err and "DistNetworkError" not in err
        assert err.splitlines()[-1].startswith("razor-node: torchrun's exit barrier lost the master's store")
    else:
        assert err.endswith(EXIT_BARRIER.decode())


def test_the_failures_message_is_the_root_causes_exception_and_last_traceback_lines(tmp_path):
    callstack = ["Traceback (most recent call last):",
                 '  File "/v/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 384, in wrapper',
                 "    result = f(*args, **kwargs)",
                 "             ^^^^^^^^^^^^^^^^^^",
                 *[f'  File "train.py", line {n}, in step{n}\n    step{n + 1}()' for n in range(10)],
                 "ValueError: bad lr"]
    error = tmp_path / "error.json"
    error.write_text(json.dumps({"message": {"message": "ValueError: bad lr", "extraInfo": {
        "py_callstack": "\n".join(callstack) + "\n", "timestamp": "1"}}}))
    message = node.failure_message({"rank": 1, "local_rank": 1, "code": 1, "error_file": str(error)}, 1,
                                   str(tmp_path), [])
    lines = message.splitlines()
    assert lines[0] == "rank 1 exited with code 1: ValueError: bad lr"
    assert lines[1:] == "\n".join(callstack[-11:-1]).splitlines()[-8:]  # the last 8, the exception once
    assert "wrapper" not in message
    # Without @record: the exit code and where to read about tracebacks; a signal is named.
    assert node.failure_message({"rank": 0, "local_rank": 0, "code": 3, "error_file": "<N/A>"}, 3, str(tmp_path),
                                []) == "rank 0 exited with code 3 (no traceback recorded: see docs/trainer.md#tracebacks)"
    assert node.failure_message({"rank": 2, "local_rank": 0, "code": -9, "error_file": "<N/A>"}, 137,
                                str(tmp_path), []) == "rank 2 exited with code 137 (SIGKILL)"
    assert node.failure_message({}, 1, str(tmp_path), ["DistNetworkError: timed out"]) == \
        "torchrun exited with code 1\nDistNetworkError: timed out"


def test_a_long_message_keeps_its_first_and_last_lines_within_a_termination_message():
    message = "rank 0 exited with code 1: RuntimeError: " + "x" * 5000 + "\n" + \
        "\n".join(f"line {n}" for n in range(1000))
    fitted = node.fit(message)
    assert len(fitted.encode()) <= node.MESSAGE_LIMIT < 4096
    assert fitted.startswith("rank 0 exited with code 1: RuntimeError: xxx") and fitted.endswith("line 999")
    assert node.fit("short") == "short"


def test_the_watcher_notices_a_stall_from_the_last_report(tmp_path, monkeypatch):
    from razor import progress

    monkeypatch.setenv("RAZOR_PROGRESS_DIR", str(tmp_path))
    watcher = node.Watcher(str(tmp_path), timeout=0.5, publisher=None)
    watcher.poll()
    time.sleep(0.6)
    watcher.poll()
    assert not watcher.stalled.is_set()  # not armed: nothing was reported yet
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        progress.report(stage="train", epoch=3, epochs=5, step=120, steps=200)
    watcher.poll()
    assert not watcher.stalled.is_set()
    time.sleep(0.6)
    watcher.poll()
    assert watcher.stalled.is_set() and watcher.message == "no progress for 0.5 s since epoch 3 step 120"


def test_node_0_sends_the_progress_with_its_token_and_a_failure_is_never_fatal(tmp_path, capsys):
    import http.server
    import threading

    from razor.progress import Progress

    got: list[tuple[str, dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.headers["Authorization"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    try:
        url = f"http://127.0.0.1:{server.server_port}/progress"
        pub = node.Publisher(str(tmp_path / "w"), url, str(token), interval=3600)
        first = Progress(stage="train", epoch=1, epochs=2, updated=1796104800.0)
        pub.update(first)
        pub.update(Progress(stage="train", epoch=2, epochs=2, updated=1796104801.0))  # within the interval
        token.write_text("tok-2\n")  # a projected token is renewed
        pub.post()  # at the end: the latest, once
        pub.post()
    finally:
        server.shutdown()
    assert got == [("Bearer tok-1", {"progress": first.to_status()}),
                   ("Bearer tok-2", {"progress": {"stage": "train", "epoch": 2, "epochs": 2,
                                                  "lastUpdateTime": "2026-12-01T06:00:01Z"}})]
    assert json.loads((tmp_path / "w" / "razor-status" / "progress.json").read_text())["epoch"] == 2
    down = node.Publisher(None, url, str(token), interval=0)
    for epoch in (1, 2):
        down.update(Progress(epoch=epoch, updated=1.0 + epoch))
    assert capsys.readouterr().err.count(f"razor-node: cannot send the progress to {url}") == 1


@pytest.mark.local
def test_a_port_taken_between_the_check_and_torchruns_bind_is_one_line(monkeypatch, capfd, tmp_path):
    """Another process takes MASTER_PORT after razor.node's check: torch's 30-line traceback
    becomes razor-node's one line, and the node exits 2 (a usage error: choose another port)."""
    from conftest import DATA

    monkeypatch.setattr(node, "port_free", lambda port: True)  # the check passed; then the port was taken
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = node_env(tmp_path, MASTER_PORT=str(port))
        code = node.run([str(DATA / "stall.py")], env)
    err = capfd.readouterr().err
    line = (f"razor-node: MASTER_PORT {port} is already in use on this machine (another job?); "
            "give each job its own port (PORT=... or port: auto)")
    assert code == node.EXIT_USAGE == 2
    assert err.strip().splitlines() == [line], err
    assert node_end(tmp_path)["message"] == line.removeprefix("razor-node: ")


@pytest.mark.local
def test_a_job_that_hangs_in_a_collective_is_stopped_as_stalled(tmp_path):
    """Both ranks report three steps; then rank 1 sleeps and rank 0 waits for it in an all_reduce.
    No process fails, but with RAZOR_PROGRESS_TIMEOUT=5 razor.node stops them and exits 124."""
    from conftest import DATA

    (tmp_path / "pids").mkdir()
    env = node_env(tmp_path, RAZOR_PROGRESS_TIMEOUT="5", RAZOR_STOP_GRACE="5", STALL_DIR=str(tmp_path / "pids"),
                   PYTHONPATH=str(Path(node.__file__).parents[1]))
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "razor.node", str(DATA / "stall.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    message = "no progress for 5 s since epoch 1 step 3"
    assert res.returncode == node.EXIT_STALLED == 124, res.stderr
    assert took < 60, took  # the start, 5 s of silence, the stop: not the collective's hour
    end = node_end(tmp_path)
    assert (end["nodeRank"], end["attempt"], end["exitCode"], end["message"]) == (0, 1, 124, message)
    assert (tmp_path / "termination-log").read_text() == message + "\n"
    assert f"razor-node: {message}; stopping the training processes" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        f"razor-node: {message}: the training processes were stopped (exit code 124)"
    shown = json.loads((tmp_path / "w" / "razor-status" / "progress.json").read_text())
    assert (shown["stage"], shown["epoch"], shown["step"], shown["steps"]) == ("train", 1, 3, 10)
    pids = [int((tmp_path / "pids" / f"pid{rank}").read_text()) for rank in (0, 1)]
    assert not [pid for pid in pids if _alive(pid)], "a training process outlived its stalled node"


@pytest.mark.local
@pytest.mark.parametrize("recorded", [True, False])
def test_the_failed_ranks_traceback_reaches_the_nodes_record(tmp_path, recorded: bool):
    from conftest import DATA

    env = node_env(tmp_path, RECORD="1" if recorded else "0")
    res = subprocess.run([sys.executable, "-m", "razor.node", str(DATA / "raise_rank1.py")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    message = node_end(tmp_path)["message"]
    assert (tmp_path / "termination-log").read_text() == message + "\n"
    if not recorded:
        assert message == "rank 1 exited with code 1 (no traceback recorded: see docs/trainer.md#tracebacks)"
        return
    lines = message.splitlines()
    assert lines[0] == "rank 1 exited with code 1: ValueError: learning rate must be positive, got -0.5"
    assert lines[-4:] == [f'  File "{DATA / "raise_rank1.py"}", line 23, in main', "    check_lr(-0.5)",
                          f'  File "{DATA / "raise_rank1.py"}", line 16, in check_lr',
                          '    raise ValueError(f"learning rate must be positive, got {lr}")']
    assert res.stderr.strip().splitlines()[-1] == f"razor-node: {lines[0]}"


@pytest.mark.local
def test_a_training_run_ends_with_razors_own_lines(tmp_path, mlp_config):
    """Every training process prints nanobind's leak report for triton's bindings as it exits
    (torch's optimizers import triton): razor.node drops it; the trainer's progress is the job's."""
    env = node_env(tmp_path, NPROC_PER_NODE="1")
    res = subprocess.run([sys.executable, "-m", "razor.node", "-m", "razor_trainer", mlp_config,
                          "--work-dir", str(tmp_path / "w"), "--cfg-options", "schedule.epochs=1"],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout
    assert "nanobind" not in res.stdout and "leaked" not in res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith("razor: plot "), res.stdout[-2000:]
    shown = json.loads((tmp_path / "w" / "razor-status" / "progress.json").read_text())
    assert (shown["stage"], shown["percent"], shown["epochs"]) == ("done", 100.0, 1)
    assert node_end(tmp_path)["exitCode"] == 0 and node_end(tmp_path)["message"] is None
