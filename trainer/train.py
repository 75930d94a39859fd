"""The trainer: ``python -m razor_trainer CONFIG`` (under torchrun with ``--launcher pytorch``).

- YAML config with ``_base_`` and ``--cfg-options`` (see razor.config), resolved copy written
  to the work dir;
- DDP with a DistributedSampler; gloo on CPU, NCCL on GPU;
- learning rate scaled by total batch against the config's base (8 GPUs unless it says);
- algorithms: ``supervised`` and ``kd`` (knowledge distillation from a teacher that is trained
  first or loaded);
- checkpoints ``epoch_N.pth`` + ``last_checkpoint`` (atomic), written by rank 0; resume with
  optimizer, scheduler, epoch, position in the epoch and RNG state, read by rank 0 and sent to
  every rank (machines need not share the work dir); a changed schedule on resume (more epochs)
  is followed from where the checkpoint is; SIGTERM/SIGUSR2 save a checkpoint, exit 75;
- ``razor-workdir.json``: the job and model a work dir belongs to; another is refused (workdir.py);
- ``metrics.jsonl``, ``metrics.png``, ``summary.json``; rank 0 reports, the others stay quiet;
- progress for razor (:func:`razor.progress.report`) from every rank, at each log interval (at
  least every 5 seconds) and after each validation, so that every node's razor.node
  sees its ranks alive; errors recorded for razor.node by torchelastic's ``@record`` on
  :func:`main`.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from razor.config import ConfigError, apply_options, load_config, parse_cfg_options
from razor.node import EXIT_PREEMPTED
from razor.progress import report

from . import checkpoint as ckpt
from . import workdir
from .data import DataSet, load_dataset
from .models import build_model, count_parameters

EXIT_CONFIG = 2
DEFAULT_BASE_GPUS = 8
#: Progress is reported at least this often (and at each log.interval), so that a stall check of
#: a few times this long never mistakes a long epoch for a hang.
PROGRESS_SECONDS = 5.0
log = logging.getLogger("razor.trainer")


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="razor_trainer", description="Train a model from a YAML config (razor's trainer)."
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("--work-dir", "--work_dir", dest="work_dir",
                   help="where checkpoints and logs go (default: work_dirs/<config stem>)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default=None,
                   help="'pytorch' under torchrun; default: pytorch when torchrun's env is set")
    p.add_argument("--resume", default="auto",
                   help="'auto' (the work dir's last checkpoint), 'never', or a checkpoint path")
    p.add_argument("--resume-from", "--resume_from", dest="resume_from", help=argparse.SUPPRESS)
    p.add_argument("--auto-resume", "--auto_resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-auto-scale-lr", dest="auto_scale_lr", action="store_false",
                   help="keep the config's learning rate whatever the number of processes")
    p.add_argument("--auto-scale-lr", dest="auto_scale_lr", action="store_true", default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--base-gpus", type=int, help="the number of GPUs the config's lr is for (8)")
    p.add_argument("--base-batch-size", type=int, help="the total batch the config's lr is for")
    p.add_argument("--seed", type=int, help="random seed (default: the config's, else 0)")
    p.add_argument("--cfg-options", "--cfg_options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. optimizer.lr=0.01 model.hidden=[64,32]")
    args = p.parse_args(argv)
    if args.resume_from:
        args.resume = args.resume_from
    if args.base_gpus is not None and args.base_batch_size is not None:
        p.error("give one of --base-gpus and --base-batch-size")
    for name in ("base_gpus", "base_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg = apply_options(cfg, parse_cfg_options(args.cfg_options))
    if args.seed is not None:
        cfg["seed"] = args.seed
    for section in ("data", "model", "optimizer", "schedule"):
        if not isinstance(cfg.get(section), dict):
            raise ConfigError(f"config {args.config!r}: section {section!r} is missing or not a mapping")
    return cfg


# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def cuda_wanted(cfg: dict[str, Any]) -> bool:
    want = str(cfg.get("device", "auto"))
    if want == "cpu" or os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() == "-1":
        return False
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but no GPU is visible")
    return torch.cuda.is_available()


def init_dist(launcher: str | None, cfg: dict[str, Any]) -> Dist:
    in_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launcher is None:
        launcher = "pytorch" if in_torchrun else "none"
    use_cuda = cuda_wanted(cfg)
    if launcher == "none":
        if in_torchrun and int(os.environ["WORLD_SIZE"]) > 1:
            raise ConfigError("--launcher none under a multi-process torchrun; use --launcher pytorch")
        return Dist(device=torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    if launcher == "slurm" and not in_torchrun:
        # srun started one task per process: derive torchrun's variables from SLURM's.
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        os.environ.setdefault("MASTER_PORT", str((cfg.get("dist_params") or {}).get("port") or 29500))
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", ""))
    elif not in_torchrun:
        raise ConfigError("--launcher pytorch needs torchrun's RANK and WORLD_SIZE; start it with torchrun")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = str((cfg.get("dist_params") or {}).get("backend") or "auto")
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = float((cfg.get("dist_params") or {}).get("timeout", 600))
    from datetime import timedelta

    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout),
                            **({"device_id": device} if use_cuda else {}))
    return Dist(rank, local_rank, world, device, backend)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[01-04],gpu7`` -> ``node01``), via scontrol."""
    import subprocess

    if not nodelist:
        raise ConfigError("--launcher slurm outside torchrun needs MASTER_ADDR or SLURM_JOB_NODELIST")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot expand SLURM_JOB_NODELIST {nodelist!r} with scontrol: {exc}") from None
    if not out:
        raise ConfigError(f"SLURM_JOB_NODELIST {nodelist!r} names no host")
    return out[0]


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: ranks stop together, never half."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(d: Dist, total: float, count: int) -> float:
    if not d.enabled:
        return total / max(count, 1)
    t = torch.tensor([total, float(count)], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t[0] / max(t[1].item(), 1.0))


def from_main(d: Dist, fn: Callable[[], Any]) -> Any:
    """Rank 0 alone runs ``fn``; every rank gets its result, or raises its error, at once.

    For what only rank 0 can see (its work dir, the checkpoints it wrote): machines need not share
    a disk, and a rank never waits in a collective for a peer that failed before reaching it."""
    result: Any = None
    error: tuple[str, str] | None = None
    failure: BaseException | None = None
    if d.is_main:
        try:
            result = fn()
        except ConfigError as exc:
            error = ("config", str(exc))
        except Exception as exc:
            if not d.enabled:
                raise
            error, failure = ("other", f"{type(exc).__name__}: {exc}"), exc
    if not d.enabled:
        if error:
            raise ConfigError(error[1])
        return result
    box = [(result, error)]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    result, error = box[0]
    if error is None:
        return result
    if error[0] == "config":
        raise ConfigError(error[1])
    if failure is not None:
        raise failure
    raise RuntimeError(f"rank 0 failed: {error[1]}")


def gather(d: Dist, obj: Any) -> list[Any]:
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- signals


class StopRequest:
    """SIGTERM / SIGUSR2 / SIGINT: finish the step, save a checkpoint, exit 75."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None


class Preempted(Exception):
    pass


# ----------------------------------------------------------------------------- training


def scaled_lr(cfg: dict[str, Any], args: argparse.Namespace, world_size: int) -> tuple[float, str | None]:
    """``new_lr = old_lr * new_batch / base_batch``; the seed's rule by number of GPUs."""
    lr = float(cfg["optimizer"]["lr"])
    per_gpu = int(cfg["data"].get("samples_per_gpu", 32))
    scale_cfg = dict(cfg.get("auto_scale_lr") or {})
    enabled = scale_cfg.get("enable", True) if args.auto_scale_lr is None else args.auto_scale_lr
    if not enabled:
        return lr, None
    if args.base_batch_size:
        base_batch = args.base_batch_size
    elif args.base_gpus:
        base_batch = args.base_gpus * per_gpu
    elif scale_cfg.get("base_batch_size"):
        base_batch = int(scale_cfg["base_batch_size"])
    else:
        base_batch = int(scale_cfg.get("base_gpus", DEFAULT_BASE_GPUS)) * per_gpu
    total = world_size * per_gpu
    new_lr = lr * total / base_batch
    base_gpus = base_batch / per_gpu
    base_txt = f"{base_gpus:g}"
    note = f"lr {lr:g} -> {new_lr:g} ({base_txt} -> {world_size} GPUs, total batch {base_batch} -> {total})"
    return new_lr, note


def build_optimizer(cfg: dict[str, Any], params, lr: float) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    kind = str(cfg.pop("type", "sgd")).lower()
    cfg.pop("lr", None)
    table = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if kind not in table:
        raise ConfigError(f"optimizer.type {kind!r} is not known (known: {', '.join(table)})")
    try:
        return table[kind](params, lr=lr, **cfg)
    except TypeError as exc:
        raise ConfigError(f"optimizer: {exc}") from None


def build_scheduler(cfg: dict[str, Any], optimizer, epochs: int):
    kind = str(cfg.get("lr_scheduler", "cosine")).lower()
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.get("milestones", [max(epochs * 2 // 3, 1)])),
            gamma=float(cfg.get("gamma", 0.1)))
    if kind in ("constant", "none"):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)
    raise ConfigError(f"schedule.lr_scheduler {kind!r} is not known (known: cosine, step, constant)")


#: A scheduler's state that says how far it is, not which schedule it follows.
_SCHEDULE_PROGRESS = frozenset({"base_lrs", "last_epoch", "_step_count", "_is_initial", "verbose",
                                "_get_lr_called_within_step", "_last_lr", "lr_lambdas"})


def schedule_shape(state: dict[str, Any]) -> dict[str, Any]:
    """The schedule a scheduler's state_dict follows (cosine's T_max, step's milestones and
    gamma...), without its progress: two equal shapes are the same schedule."""
    return {k: v for k, v in state.items() if k not in _SCHEDULE_PROGRESS}


def describe_schedule(state: dict[str, Any]) -> str:
    if "T_max" in state:
        return f"cosine over {state['T_max']} epochs"
    if "milestones" in state:
        milestones = sorted(Counter(state["milestones"]).elements())
        return f"step at epochs {milestones}, gamma {float(state.get('gamma', 0.1)):g}"
    return "constant"


def continue_schedule(cfg: dict[str, Any], optimizer, epochs: int, done: int):
    """A scheduler for ``epochs`` epochs at the point where ``done`` epochs are finished, over an
    optimizer restored from a checkpoint: each group's lr back to its base (``initial_lr``), then
    stepped ``done`` times, so that the lr is the new schedule's, as if it had been the plan."""
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["lr"] = group["initial_lr"]
    scheduler = build_scheduler(cfg, optimizer, epochs)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore")
        for _ in range(done):
            scheduler.step()
    return scheduler


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature * temperature
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def evaluate(model: nn.Module, split, device: torch.device, batch: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(split), batch):
        x = split.x[i:i + batch].to(device, non_blocking=True)
        y = split.y[i:i + batch].to(device, non_blocking=True)
        correct += int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / max(len(split), 1)


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def rng_state(d: Dist) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if d.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(d.device)
    return state


def set_rng_state(d: Dist, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if d.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), d.device)


@dataclass
class Stage:
    """One model trained for some epochs, checkpointed into its own folder."""

    name: str
    model: nn.Module
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    directory: Path
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    ddp: nn.Module
    sched_cfg: dict[str, Any] = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg: dict[str, Any], args: argparse.Namespace, d: Dist, work_dir: Path):
        self.cfg, self.args, self.d, self.work_dir = cfg, args, d, work_dir
        self.job = job_name()
        self.stop = StopRequest()
        self.data: DataSet = load_dataset(cfg["data"])
        self.batch = int(cfg["data"].get("samples_per_gpu", 32))
        self.seed = int(cfg.get("seed", 0))
        self.check_every = int((cfg.get("runtime") or {}).get("stop_check_interval", 20))
        self.log_every = int((cfg.get("log") or {}).get("interval", 0))
        self.progress_every = PROGRESS_SECONDS
        #: The epochs of each model this run trains (a KD teacher's, then the student's) and how
        #: many of them come before the current one: the progress is of the whole run.
        self.plan: list[int] = []
        self.epochs_before = 0
        self.samples_seen = 0
        self.last_report = (time.monotonic(), 0)
        ck = cfg.get("checkpoint") or {}
        self.ckpt_interval = int(ck.get("interval", 1))
        self.max_keep = int(ck.get("max_keep", 3))
        self.lr, self.lr_note = scaled_lr(cfg, args, d.world_size)
        self.metrics_path = work_dir / "metrics.jsonl"
        self.first_step_time: float | None = None
        self.train_seconds, self.train_samples = 0.0, 0
        self.x_train = self.data.train.x.to(d.device)
        self.y_train = self.data.train.y.to(d.device)

    # -- helpers
    def info(self, msg: str) -> None:
        if self.d.is_main:
            log.info(msg)

    def new_model(self, model_cfg: dict[str, Any]) -> nn.Module:
        torch.manual_seed(self.seed)  # identical initial weights on every rank
        return build_model(model_cfg, self.data.num_features, self.data.num_classes,
                           self.data.shape).to(self.d.device)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.d.enabled:
            return model
        if self.d.device.type == "cuda":
            return DDP(model, device_ids=[self.d.device.index])
        return DDP(model)

    def make_stage(self, name: str, model_cfg: dict[str, Any], optim_cfg: dict[str, Any],
                   sched_cfg: dict[str, Any], directory: Path, loss) -> Stage:
        model = self.new_model(model_cfg)
        epochs = int(sched_cfg.get("epochs", 10))
        optimizer = build_optimizer(optim_cfg, model.parameters(), self.lr)
        scheduler = build_scheduler(sched_cfg, optimizer, epochs)
        return Stage(name, model, epochs, optimizer, scheduler, directory, loss, self.wrap(model),
                     dict(sched_cfg))

    # -- checkpoints
    def save(self, st: Stage, epoch: int, iteration: int) -> Path | None:
        rngs = gather(self.d, rng_state(self.d))
        path = None
        if self.d.is_main:
            state = {
                "meta": {"stage": st.name, "epoch": epoch, "iter": iteration, "epochs": st.epochs,
                         "world_size": self.d.world_size, "time": time.time(), "seed": self.seed,
                         "job": self.job},
                "state_dict": st.model.state_dict(),
                "optimizer": st.optimizer.state_dict(),
                "scheduler": st.scheduler.state_dict(),
                "rng": rngs,
                "config": self.cfg,
            }
            path = ckpt.save(st.directory, state, epoch, iteration, self.max_keep)
        if self.d.enabled:
            dist.barrier()
        return path

    def restore(self, st: Stage, explicit: str | None) -> tuple[int, int]:
        """Load the stage's checkpoint per --resume; return (finished epochs, iteration).

        Rank 0 decides what to resume from (or that there is nothing) from its own work dir, reads
        the checkpoint and sends it to every rank over the process group: the other machines need
        not see rank 0's disk, and every rank resumes from the same state."""
        if self.args.resume == "never":
            return 0, 0
        found = from_main(self.d, lambda: self.find_checkpoint(st, explicit))
        if found is None:
            return 0, 0
        path, state = found
        fresh = schedule_shape(st.scheduler.state_dict())
        st.model.load_state_dict(state["state_dict"])
        st.optimizer.load_state_dict(state["optimizer"])
        st.scheduler.load_state_dict(state["scheduler"])
        meta = state["meta"]
        done = int(meta["epoch"])
        if schedule_shape(state["scheduler"]) != fresh and done < st.epochs:
            # The run asks for another schedule than the checkpoint's (most often more epochs):
            # follow the new one from here, rather than the old one that has run out.
            old = describe_schedule(state["scheduler"])
            st.scheduler = continue_schedule(st.sched_cfg, st.optimizer, st.epochs, done)
            self.info(f"[{st.name}] schedule changed since the checkpoint ({old} -> "
                      f"{describe_schedule(st.scheduler.state_dict())}): the learning rate follows "
                      f"the new schedule from epoch {done + 1} "
                      f"(lr {st.optimizer.param_groups[0]['lr']:.4g})")
        rngs = state.get("rng") or []
        if len(rngs) == self.d.world_size:
            set_rng_state(self.d, rngs[self.d.rank])
        elif rngs:
            set_rng_state(self.d, rngs[0])
            self.info(f"checkpoint was written by {len(rngs)} processes, now {self.d.world_size}: "
                      "the learning rate and RNG state come from the old run")
        where = f"epoch {meta['epoch']}" + (f", iteration {meta['iter']}" if meta["iter"] else "")
        self.info(f"[{st.name}] resumed from {path} ({where})")
        return done, int(meta["iter"])

    def find_checkpoint(self, st: Stage, explicit: str | None) -> tuple[Path, dict] | None:
        """On rank 0: the checkpoint to resume from, loaded, or None to start afresh."""
        if not explicit:
            return ckpt.load_latest(st.directory, self.info)
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"--resume {explicit!r}: no such checkpoint")
        try:
            state = ckpt.load(path)
        except Exception as exc:
            raise ConfigError(f"--resume {explicit!r}: cannot read it "
                              f"({type(exc).__name__}: {exc})") from None
        missing = [k for k in ("state_dict", "optimizer", "scheduler", "meta")
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise ConfigError(f"--resume {explicit!r} is not a razor checkpoint (it has no "
                              f"{', '.join(missing)}): resume needs the optimizer and schedule too")
        mine = {k: tuple(v.shape) for k, v in st.model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state["state_dict"].items()}
        if mine != theirs:
            cfg = state.get("config")
            there = (f"{workdir.describe(workdir.identity(cfg))} there, "
                     if isinstance(cfg, dict) else "")
            raise ConfigError(f"--resume {explicit!r}: the checkpoint is of another model ({there}"
                              f"{workdir.describe(workdir.identity(self.cfg))} here); its weights "
                              f"do not fit this [{st.name}]")
        return path, state

    # -- metrics
    def record(self, row: dict[str, Any]) -> None:
        if self.d.is_main:
            with self.metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def trim_metrics(self, stage: str, epoch: int) -> None:
        """After a resume, forget metrics of epochs that will be trained again."""
        if not self.d.is_main or not self.metrics_path.exists():
            return
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if not (r.get("stage") == stage and r.get("epoch", 0) > epoch)]
        if len(kept) != len(rows):
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    # -- progress
    def report_progress(self, stage: str, st: Stage, epoch: int, step: int, steps: int,
                        loss: float | None = None, accuracy: float | None = None) -> None:
        """This rank's progress for razor (a no-op outside razor): ``epoch`` (from 1) of the
        current model, ``step`` of ``steps`` in it, the percent of the whole run, the samples
        per second of every rank since the last report; the ETA is razor.progress's."""
        total = sum(self.plan) or st.epochs
        done = self.epochs_before + epoch - 1 + (step / steps if steps else 1.0)
        now = time.monotonic()
        then, samples = self.last_report
        rate = None
        if now > then and self.samples_seen > samples:
            rate = (self.samples_seen - samples) * self.d.world_size / (now - then)
        self.last_report = (now, self.samples_seen)
        metrics = {name: value for name, value in (("loss", loss), ("accuracy", accuracy)) if value is not None}
        report(stage=stage, epoch=epoch, epochs=st.epochs, step=step, steps=steps,
               percent=min(100.0, 100.0 * done / total), metrics=metrics, samples_per_second=rate)

    # -- the loop
    def run_stage(self, st: Stage, resume_path: str | None = None) -> None:
        start_epoch, start_iter = self.restore(st, resume_path)
        self.trim_metrics(st.name, start_epoch)
        if start_epoch >= st.epochs:
            self.info(f"[{st.name}] already trained for {st.epochs} epochs")
            return
        sampler = DistributedSampler(range(len(self.y_train)), num_replicas=self.d.world_size,
                                     rank=self.d.rank, shuffle=True, seed=self.seed)
        # Everything made so far (the imported libraries, the data, the models) lives until the
        # end: out of the garbage collector's sight, its full collections during training no
        # longer walk it.
        gc.collect()
        gc.freeze()
        self.info(f"[{st.name}] {count_parameters(st.model):,} parameters, {st.epochs} epochs, "
                  f"{len(sampler)} samples per process, batch {self.batch} per process")
        for epoch in range(start_epoch, st.epochs):
            tic = time.monotonic()
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), device=self.d.device)
            batches = (len(order) + self.batch - 1) // self.batch
            loss_sum = torch.zeros((), device=self.d.device)
            seen = 0
            first = start_iter if epoch == start_epoch else 0
            for it in range(first, batches):
                idx = order[it * self.batch:(it + 1) * self.batch]
                x, y = self.x_train[idx], self.y_train[idx]
                logits = st.ddp(x)
                loss = st.loss(x, logits, y)
                st.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                st.optimizer.step()
                if self.first_step_time is None:
                    self.first_step_time = time.time()
                loss_sum.add_(loss.detach(), alpha=len(y))
                seen += len(y)
                self.samples_seen += len(y)
                logged = bool(self.log_every) and (it + 1) % self.log_every == 0
                if logged:
                    self.info(f"[{st.name}] epoch {epoch + 1}/{st.epochs} iter {it + 1}/{batches} "
                              f"loss {float(loss.detach()):.4f}")
                if logged or time.monotonic() - self.last_report[0] >= self.progress_every:
                    self.report_progress("train", st, epoch + 1, it + 1, batches, loss=float(loss.detach()))
                if (it + 1) % self.check_every == 0 and it + 1 < batches:
                    if any_rank(self.d, self.stop.requested):
                        self.preempt(st, epoch, it + 1)
            train_seconds = time.monotonic() - tic
            self.train_seconds += train_seconds
            self.train_samples += seen * self.d.world_size
            train_loss = mean_over_ranks(self.d, float(loss_sum), seen)
            lr = st.optimizer.param_groups[0]["lr"]
            st.scheduler.step()
            acc = evaluate(st.model, self.data.val, self.d.device)
            done = epoch + 1
            self.report_progress("val", st, done, batches, batches, loss=train_loss, accuracy=acc)
            seconds = time.monotonic() - tic
            self.record({"stage": st.name, "epoch": done, "loss": round(train_loss, 6), "lr": lr,
                         "val_acc": round(acc, 6), "seconds": round(seconds, 4),
                         "train_seconds": round(train_seconds, 4), "samples": seen * self.d.world_size})
            stop = any_rank(self.d, self.stop.requested)
            saved = ""
            if stop or done % self.ckpt_interval == 0 or done == st.epochs:
                path = self.save(st, done, 0)
                saved = f"  -> {path.name}" if path else ""
            self.info(f"[{st.name}] epoch {done:>3}/{st.epochs}  loss {train_loss:.4f}  "
                      f"lr {lr:.4g}  val_acc {acc:.4f}  ({seconds:.2f}s){saved}")
            if stop:
                self.preempt(st, done, 0, saved=True)

    def preempt(self, st: Stage, epoch: int, iteration: int, saved: bool = False) -> None:
        path = None if saved else self.save(st, epoch, iteration)
        name = signal.Signals(self.stop.signal).name if self.stop.signal else "a stop signal"
        where = path or st.directory / ckpt.checkpoint_name(epoch, iteration)
        self.info(f"[{st.name}] stopping on {name}: checkpoint {where}; resume continues from there")
        raise Preempted()

    # -- algorithms
    def train(self) -> dict[str, Any]:
        cfg, algo = self.cfg, dict(self.cfg.get("algorithm") or {"type": "supervised"})
        kind = algo.get("type", "supervised")
        summary: dict[str, Any] = {"algorithm": kind}
        explicit = None if self.args.resume in ("auto", "never") else self.args.resume
        teacher = None
        if kind == "kd":
            tcfg = dict(algo.get("teacher") or {})
            if "model" not in tcfg:
                raise ConfigError("algorithm.teacher.model is required for knowledge distillation")
            temperature, alpha = float(algo.get("temperature", 4.0)), float(algo.get("alpha", 0.9))
            if temperature <= 0 or not 0.0 <= alpha <= 1.0:
                raise ConfigError("algorithm: temperature must be > 0 and alpha in [0, 1]")
            if not tcfg.get("checkpoint"):  # trained first: part of the run
                self.plan.append(int(tcfg.get("epochs", cfg["schedule"].get("epochs", 10))))
            self.plan.append(int(cfg["schedule"].get("epochs", 10)))
            teacher = self.teacher(tcfg)
            summary["teacher_accuracy"] = evaluate(teacher, self.data.val, self.d.device)
            self.info(f"[teacher] accuracy {summary['teacher_accuracy']:.4f} on "
                      f"{len(self.data.val)} held-out samples")
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

            def loss(x, logits, y):
                with torch.no_grad():
                    t_logits = teacher(x)
                return kd_loss(logits, t_logits, y, temperature, alpha)
        elif kind == "supervised":
            def loss(x, logits, y):
                return F.cross_entropy(logits, y)
        else:
            raise ConfigError(f"algorithm.type {kind!r} is not known (known: supervised, kd)")
        st = self.make_stage("student" if kind == "kd" else "model", cfg["model"], cfg["optimizer"],
                             cfg["schedule"], self.work_dir, loss)
        self.plan = self.plan or [st.epochs]
        self.epochs_before = sum(self.plan[:-1])
        self.run_stage(st, explicit)
        digests = gather(self.d, weights_digest(st.model))
        summary.update({
            "accuracy": evaluate(st.model, self.data.val, self.d.device),
            "val_samples": len(self.data.val),
            "epochs": st.epochs,
            "world_size": self.d.world_size,
            "lr": self.lr,
            "weights_digests": digests,
            "first_step_time": self.first_step_time,
            "train_samples_per_second": (round(self.train_samples / self.train_seconds, 1)
                                         if self.train_seconds else None),
            "checkpoint": str(self.work_dir / (self.work_dir / ckpt.POINTER).read_text().strip())
            if (self.work_dir / ckpt.POINTER).exists() else None,
        })
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks disagree on the final weights: {digests}")
        return summary

    def teacher(self, tcfg: dict[str, Any]) -> nn.Module:
        if tcfg.get("checkpoint"):
            model = self.new_model(tcfg["model"])
            path = Path(tcfg["checkpoint"])
            if not path.is_file():
                raise ConfigError(f"algorithm.teacher.checkpoint {str(path)!r} not found")
            state = ckpt.load(path, map_location=self.d.device)
            model.load_state_dict(state.get("state_dict", state))
            self.info(f"[teacher] loaded {path}")
            return model
        sched = {**self.cfg["schedule"], **({"epochs": tcfg["epochs"]} if "epochs" in tcfg else {})}
        optim = dict(tcfg.get("optimizer") or self.cfg["optimizer"])
        st = self.make_stage("teacher", tcfg["model"], optim, sched, self.work_dir / "teacher",
                             lambda x, logits, y: F.cross_entropy(logits, y))
        self.run_stage(st)
        return st.model


# ----------------------------------------------------------------------------- entry point


def setup_logging(d: Dist, work_dir: Path) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(fmt)
    root.addHandler(out)
    # Rank 0 reports; the others speak only of problems.
    root.setLevel(logging.INFO if d.is_main else logging.WARNING)
    if d.is_main:
        fh = logging.FileHandler(work_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        root.addHandler(fh)


def job_name() -> str | None:
    """The RazorJob this process belongs to (every backend and tools/dist_train.sh set it)."""
    return os.environ.get("RAZOR_JOB_NAME", "").strip() or None


def default_work_dir(config: str) -> Path:
    return Path("work_dirs") / Path(config).stem


def record_error(exc: BaseException) -> None:
    """Write a config error, which ends the run with exit code 2 and no traceback, to torchrun's
    error file for this process (``TORCHELASTIC_ERROR_FILE``, as ``@record`` does for an
    exception), so that razor.node's message (a pod's status, ``razorctl status``) says it."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    doc = {"message": {"message": f"{type(exc).__name__}: {exc}",
                       "extraInfo": {"py_callstack": "", "timestamp": str(int(time.time()))}}}
    try:
        Path(path).write_text(json.dumps(doc))
    except OSError:
        pass


@record  # an exception's traceback goes to torchrun's error file, where razor.node reads it
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    d = Dist()
    try:
        cfg = build_config(args)
        d = init_dist(args.launcher, cfg)
        work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(args.config)
        work_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(d, work_dir)
        # Whose work dir this is: rank 0 checks (and records) it, every rank gets the verdict.
        from_main(d, lambda: workdir.claim(work_dir, cfg, job_name(), args.resume, args.config, log.info))
        seed = int(cfg.get("seed", 0))
        random.seed(seed + d.rank)
        np.random.seed(seed + d.rank)
        torch.manual_seed(seed + d.rank)
        trainer = Trainer(cfg, args, d, work_dir)
        if d.is_main:
            import yaml

            (work_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            dev = f"{d.device.type} ({d.backend or 'single process'})"
            log.info(f"razor trainer: {args.config} on {d.world_size} process(es), {dev}; "
                     f"work dir {work_dir}")
            if trainer.lr_note:
                log.info(trainer.lr_note)
        summary = trainer.train()
        report(stage="done", epoch=summary["epochs"], epochs=summary["epochs"], percent=100.0, eta_seconds=0,
               metrics={"accuracy": summary["accuracy"]})
        if d.is_main:
            from .plot import plot_metrics

            plot = plot_metrics(trainer.metrics_path, work_dir / "metrics.png")
            summary.update({"work_dir": str(work_dir), "plot": str(plot) if plot else None})
            (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            who = "student" if summary["algorithm"] == "kd" else "model"
            extra = (f" (teacher {summary['teacher_accuracy']:.4f})"
                     if "teacher_accuracy" in summary else "")
            print(f"razor: done. {who} accuracy {summary['accuracy']:.4f} on "
                  f"{summary['val_samples']} held-out samples{extra}", flush=True)
            if d.world_size > 1:
                print(f"razor: weights identical on all {d.world_size} ranks "
                      f"(sha256 {summary['weights_digests'][0]})", flush=True)
            print(f"razor: work dir    {work_dir}", flush=True)
            print(f"razor: checkpoint  {summary['checkpoint']} (named in {work_dir / ckpt.POINTER})",
                  flush=True)
            print(f"razor: plot        {summary['plot']}", flush=True)
        if d.enabled:
            dist.barrier()  # leave together: a rank tearing down early can abort its peers
        return 0
    except Preempted:
        return EXIT_PREEMPTED
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        if d.is_main or not d.enabled:
            print(f"razor_trainer: error: {exc}", file=sys.stderr, flush=True)
        record_error(exc)
        return EXIT_CONFIG
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
