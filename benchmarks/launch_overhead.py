"""Launch overhead: ``razorctl submit --local`` against a bare ``torchrun`` of the same job.

Both sides train trainer/configs/digits_mlp.yaml for a few epochs on 1 node x 2 processes
(CPU, gloo, OMP_NUM_THREADS=1, CUDA_VISIBLE_DEVICES=-1), each run in a fresh work dir. Per run:

- time to first optimizer step: the trainer's ``first_step_time`` (a time.time() stamp in
  <work_dir>/summary.json) minus the wall-clock time just before the command was spawned;
- total wall time of the command.

The sides alternate (razorctl, bare, razorctl, bare, ...) after an untimed warm-up pair; the
report gives medians and the ratio razorctl/bare. Also timed: ``razorctl render --local``
of the same job (the CLI's start-up, parsing and checks without training), to show where
razorctl's extra time goes.

    .venv/bin/python benchmarks/launch_overhead.py [--repeat 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from common import (CONFIG, HOST, NPROC, PYTHON, RAZORCTL, BenchError, free_port, median, run_bounded, spread,
                    verdict, write_job)

TARGET = 1.15  # razorctl/bare, at most


@dataclass(frozen=True)
class Sample:
    first_step: float  # seconds from spawn to the first optimizer step
    total: float  # seconds from spawn to exit


@dataclass
class Result:
    epochs: int
    razorctl: list[Sample] = field(default_factory=list)
    bare: list[Sample] = field(default_factory=list)
    render: list[float] = field(default_factory=list)

    def ratio(self, measure: str) -> float:
        ours = median([getattr(s, measure) for s in self.razorctl])
        return ours / median([getattr(s, measure) for s in self.bare])


def first_step(work_dir: Path, started: float) -> float:
    summary = json.loads((work_dir / "summary.json").read_text())
    if summary.get("first_step_time") is None:
        raise BenchError(f"{work_dir / 'summary.json'} has no first_step_time")
    return float(summary["first_step_time"]) - started


def job_file(tmp: Path, name: str, epochs: int) -> tuple[Path, Path]:
    work_dir = tmp / name
    return write_job(tmp / f"{name}.yaml", "bench-launch", work_dir, epochs), work_dir


def run_razorctl(tmp: Path, name: str, epochs: int, timeout: float) -> Sample:
    job, work_dir = job_file(tmp, name, epochs)
    run = run_bounded([RAZORCTL, "submit", "--local", str(job)], tmp / f"{name}.log", timeout)
    return Sample(first_step(work_dir, run.started), run.seconds)


def run_bare(tmp: Path, name: str, epochs: int, timeout: float) -> Sample:
    work_dir = tmp / name
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={NPROC}",
           f"--master-addr={HOST}", f"--master-port={free_port()}",
           "-m", "razor_trainer", str(CONFIG), "--launcher", "pytorch", "--work-dir", str(work_dir),
           "--cfg-options", f"schedule.epochs={epochs}"]
    run = run_bounded(cmd, tmp / f"{name}.log", timeout)
    return Sample(first_step(work_dir, run.started), run.seconds)


def run_render(tmp: Path, name: str, epochs: int, timeout: float) -> float:
    job, _ = job_file(tmp, name, epochs)
    return run_bounded([RAZORCTL, "render", "--local", str(job)], tmp / f"{name}.log", timeout).seconds


def measure(repeat: int = 5, epochs: int = 3, warmup: int = 1, timeout: float = 300.0,
            progress: Callable[[str], None] = print) -> Result:
    result = Result(epochs)
    with tempfile.TemporaryDirectory(prefix="razor-bench-launch-") as name:
        tmp = Path(name)
        for i in range(warmup):
            run_razorctl(tmp, f"warmup{i}-razorctl", epochs, timeout)
            run_bare(tmp, f"warmup{i}-bare", epochs, timeout)
        for i in range(repeat):
            ours = run_razorctl(tmp, f"run{i}-razorctl", epochs, timeout)
            bare = run_bare(tmp, f"run{i}-bare", epochs, timeout)
            result.razorctl.append(ours)
            result.bare.append(bare)
            result.render.append(run_render(tmp, f"run{i}-render", epochs, timeout))
            progress(f"launch {i + 1}/{repeat}: first step razorctl {ours.first_step:.2f}s "
                     f"bare {bare.first_step:.2f}s; total razorctl {ours.total:.2f}s "
                     f"bare {bare.total:.2f}s")
    return result


def table(r: Result) -> str:
    """Markdown: medians (min–max) in seconds, the ratio and the target."""
    rows = ["| measure | razorctl submit --local | bare torchrun | ratio razorctl/bare | target | |",
            "|---|---|---|---|---|---|"]
    for label, attr in (("time to first optimizer step (s)", "first_step"),
                        ("total wall time (s)", "total")):
        ratio = r.ratio(attr)
        rows.append(f"| {label} | {spread([getattr(s, attr) for s in r.razorctl])} "
                    f"| {spread([getattr(s, attr) for s in r.bare])} | {ratio:.3f}x "
                    f"| ≤ {TARGET:.2f}x | {verdict(ratio <= TARGET)} |")
    rows.append(f"| `razorctl render --local` of the same job (s) | {spread(r.render)} | | | | |")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="measured pairs (default 5)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per run (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs first (default 1)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run before it is stopped")
    args = p.parse_args()
    if args.repeat < 1 or args.epochs < 1 or args.warmup < 0:
        p.error("--repeat and --epochs must be at least 1, --warmup at least 0")
    result = measure(args.repeat, args.epochs, args.warmup, args.timeout)
    print(table(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
