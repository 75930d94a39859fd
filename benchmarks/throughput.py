"""Trainer throughput (training samples/s) against a minimal hand-written DDP loop.

Both sides run under the same torchrun (1 node x 2 processes, CPU, gloo, OMP_NUM_THREADS=1)
on the same data (digits, the config's split), the same model (the config's MLP with wider
hidden layers so that compute matters), the same batch (32 per process, DistributedSampler
indices sliced into batches, tensor indexing, no DataLoader), the same SGD settings after the
trainer's lr scaling and the same cosine schedule. Throughput is global samples over the time
spent in the epochs' training iterations, timed the same way on both sides:

- trainer: ``train_samples_per_second`` from <work_dir>/summary.json; its epoch times with
  evaluation ("seconds") and without ("train_seconds") from metrics.jsonl;
- baseline: :func:`worker` below, which also hashes its final weights as the trainer does,
  so the report can say whether both sides did exactly the same arithmetic.

The sides alternate (trainer, baseline, ...); the report gives medians and trainer/baseline.

    .venv/bin/python benchmarks/throughput.py [--repeat 3] [--epochs 20] [--hidden 512,512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common import CONFIG, HOST, NPROC, PYTHON, BenchError, free_port, median, run_bounded, spread, verdict

TARGET = 0.95  # trainer/baseline, at least
#: Long enough that the timed part (a few seconds) outweighs timer and scheduling noise.
EPOCHS = 20


# ----------------------------------------------------------------------------- the baseline


def worker(hidden: list[int], epochs: int, out: Path) -> None:
    """The minimal DDP loop; run under torchrun, rank 0 writes its numbers to ``out``."""
    import hashlib
    import time

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler

    from razor.config import apply_options, load_config
    from razor_trainer.data import load_dataset
    from razor_trainer.models import build_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = apply_options(load_config(CONFIG), {"model.hidden": hidden})
    seed, opt_cfg = int(cfg.get("seed", 0)), cfg["optimizer"]
    batch = int(cfg["data"].get("samples_per_gpu", 32))
    # The trainer's rule: lr * total batch / base batch.
    lr = float(opt_cfg["lr"]) * world * batch / int(cfg["auto_scale_lr"]["base_batch_size"])

    data = load_dataset({"dataset": "digits", "val_fraction": 0.2, "split_seed": 0})
    x_train, y_train = data.train.x, data.train.y
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = build_model(cfg["model"], data.num_features, data.num_classes, data.shape)
    ddp = DDP(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=float(opt_cfg["momentum"]),
                                weight_decay=float(opt_cfg["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    sampler = DistributedSampler(range(len(y_train)), num_replicas=world, rank=rank,
                                 shuffle=True, seed=seed)
    train_seconds, samples = 0.0, 0
    for epoch in range(epochs):
        tic = time.monotonic()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(ddp(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train_seconds += time.monotonic() - tic
        samples += len(order) * world
        scheduler.step()

    digest = hashlib.sha256()  # as the trainer's weights_digest
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    if rank == 0:
        out.write_text(json.dumps({"train_samples_per_second": samples / train_seconds,
                                   "train_seconds": train_seconds,
                                   "weights_digest": digest.hexdigest()[:16]}) + "\n")
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class TrainerSample:
    samples_per_second: float
    train_seconds: float  # sum of metrics.jsonl "train_seconds"
    epoch_seconds: float  # sum of metrics.jsonl "seconds" (training + evaluation)
    total: float  # wall time of the whole torchrun command
    digest: str


@dataclass(frozen=True)
class BaselineSample:
    samples_per_second: float
    train_seconds: float
    total: float
    digest: str


@dataclass
class Result:
    epochs: int
    hidden: list[int]
    trainer: list[TrainerSample] = field(default_factory=list)
    baseline: list[BaselineSample] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return (median([s.samples_per_second for s in self.trainer])
                / median([s.samples_per_second for s in self.baseline]))

    @property
    def same_weights(self) -> bool:
        return {s.digest for s in self.trainer} == {s.digest for s in self.baseline}


def torchrun(*args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={NPROC}",
            f"--master-addr={HOST}", f"--master-port={free_port()}", *args]


def options(hidden: list[int], epochs: int) -> list[str]:
    return [f"model.hidden=[{','.join(map(str, hidden))}]", f"schedule.epochs={epochs}"]


def run_trainer(tmp: Path, name: str, hidden: list[int], epochs: int, timeout: float) -> TrainerSample:
    work_dir = tmp / name
    cmd = torchrun("-m", "razor_trainer", str(CONFIG), "--launcher", "pytorch",
                   "--work-dir", str(work_dir), "--cfg-options", *options(hidden, epochs))
    run = run_bounded(cmd, tmp / f"{name}.log", timeout)
    summary: dict[str, Any] = json.loads((work_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line]
    return TrainerSample(float(summary["train_samples_per_second"]),
                         sum(r["train_seconds"] for r in rows), sum(r["seconds"] for r in rows),
                         run.seconds, summary["weights_digests"][0])


def run_baseline(tmp: Path, name: str, hidden: list[int], epochs: int, timeout: float) -> BaselineSample:
    out = tmp / f"{name}.json"
    cmd = torchrun(str(Path(__file__).resolve()), "--worker", "--hidden", ",".join(map(str, hidden)),
                   "--epochs", str(epochs), "--out", str(out))
    run = run_bounded(cmd, tmp / f"{name}.log", timeout)
    if not out.is_file():
        raise BenchError(f"the baseline wrote no {out}")
    numbers = json.loads(out.read_text())
    return BaselineSample(numbers["train_samples_per_second"], numbers["train_seconds"], run.seconds,
                          numbers["weights_digest"])


def measure(repeat: int = 3, epochs: int = EPOCHS, hidden: list[int] | None = None,
            timeout: float = 600.0, progress: Callable[[str], None] = print) -> Result:
    result = Result(epochs, hidden or [512, 512])
    with tempfile.TemporaryDirectory(prefix="razor-bench-throughput-") as name:
        tmp = Path(name)
        for i in range(repeat):
            ours = run_trainer(tmp, f"run{i}-trainer", result.hidden, epochs, timeout)
            base = run_baseline(tmp, f"run{i}-baseline", result.hidden, epochs, timeout)
            result.trainer.append(ours)
            result.baseline.append(base)
            progress(f"throughput {i + 1}/{repeat}: trainer {ours.samples_per_second:.0f} samples/s, "
                     f"baseline {base.samples_per_second:.0f} samples/s")
    return result


def table(r: Result) -> str:
    """Markdown: medians (min–max), the ratio and the target."""
    met = verdict(r.ratio >= TARGET)
    t, b = r.trainer, r.baseline
    rows = [
        "| measure | razor trainer | hand-written DDP loop | ratio trainer/baseline | target | |",
        "|---|---|---|---|---|---|",
        f"| training samples/s | {spread([s.samples_per_second for s in t], '{:.0f}')} "
        f"| {spread([s.samples_per_second for s in b], '{:.0f}')} | {r.ratio:.3f}x "
        f"| ≥ {TARGET:.2f}x | {met} |",
        f"| time in training iterations, all epochs (s) | {spread([s.train_seconds for s in t])} "
        f"| {spread([s.train_seconds for s in b])} | | | |",
        f"| trainer epochs with evaluation, all epochs (s) | {spread([s.epoch_seconds for s in t])} "
        "| — | | | |",
        f"| whole torchrun command, start-up and exit included (s) | {spread([s.total for s in t])} "
        f"| {spread([s.total for s in b])} | | | |",
    ]
    return "\n".join(rows) + "\n"


def parse_hidden(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="measured pairs (default 3)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs per run (default {EPOCHS})")
    p.add_argument("--hidden", type=parse_hidden, default=[512, 512],
                   help="the MLP's hidden layers, e.g. 512,512 (default)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it is stopped")
    p.add_argument("--worker", action="store_true", help="(internal) be the baseline under torchrun")
    p.add_argument("--out", type=Path, help="(internal) where the baseline's rank 0 writes its numbers")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.epochs < 1 or not args.hidden:
        p.error("--repeat and --epochs must be at least 1, --hidden not empty")
    if args.worker:
        if args.out is None:
            p.error("--worker needs --out")
        worker(args.hidden, args.epochs, args.out)
        return 0
    result = measure(args.repeat, args.epochs, args.hidden, args.timeout)
    print(table(result), end="")
    print("same final weights as the trainer: " + ("yes" if result.same_weights else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
