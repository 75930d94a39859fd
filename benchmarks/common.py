"""What the benchmarks share: paths, the one environment both sides run in, bounded runs.

Standard library only, so that importing it (from run.py) starts nothing heavy.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
RAZORCTL = str(VENV_BIN / "razorctl")
CONFIG = ROOT / "trainer" / "configs" / "digits_mlp.yaml"
HOST = "127.0.0.1"
#: Processes of the one node of the launch, throughput and SLURM benchmarks (CPU, gloo).
NPROC = 2

#: Variables of a launcher that must not leak from the caller into either side.
_LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NNODES",
                "NODE_RANK", "NPROC_PER_NODE", "GPUS_PER_NODE", "RAZOR_JOB_NAME", "RAZOR_WORK_DIR")


class BenchError(RuntimeError):
    pass


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """``check()``'s first true value, polled every ``interval`` s; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def bench_env() -> dict[str, str]:
    """The same environment for every side: CPU only, one OpenMP thread per process."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_VARS and not k.startswith(("PET_", "TORCHELASTIC_"))}
    env.update({"CUDA_VISIBLE_DEVICES": "-1", "OMP_NUM_THREADS": "1"})
    return env


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Run:
    started: float  # time.time() just before the process was spawned
    seconds: float  # wall time until it exited (monotonic clock)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (razorctl passes it on to its nodes), then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bounded(cmd: list[str], log: Path, timeout: float) -> Run:
    """Run ``cmd`` from the repository root, output to ``log``; fail on error or timeout."""
    with log.open("wb") as out:
        started, tic = time.time(), time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise BenchError(f"{cmd[0]} ... did not finish within {timeout:g}s; last lines of "
                             f"{log}:\n{_tail(log)}") from None
        seconds = time.monotonic() - tic
    if code != 0:
        raise BenchError(f"{' '.join(cmd)}\nexited with code {code}; last lines of {log}:\n{_tail(log)}")
    return Run(started, seconds)


def write_job(path: Path, name: str, work_dir: Path, epochs: int, **spec: Any) -> Path:
    """The RazorJob file the launch and SLURM benchmarks submit: CONFIG for ``epochs`` epochs,
    one node of NPROC processes on CPU, a free port, one OpenMP thread each, plus ``spec``."""
    job = {
        "apiVersion": "razor.dev/v1alpha1",
        "kind": "RazorJob",
        "metadata": {"name": name},
        "spec": {
            "config": str(CONFIG),
            "nnodes": 1,
            "nprocPerNode": NPROC,
            "gpusPerNode": 0,
            "port": "auto",
            "workDir": str(work_dir),
            "cfgOptions": {"schedule.epochs": epochs},
            "env": {"OMP_NUM_THREADS": "1"},
            **spec,
        },
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def verdict(ok: bool) -> str:
    """A target's cell in a report's table."""
    return "met" if ok else "**missed**"


def outcome(ok: bool) -> str:
    """How a report's sentence about a target opens."""
    return "The target is met" if ok else "**The target is missed**"


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)`` of a list of measurements."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"
