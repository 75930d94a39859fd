"""The launcher contract: the environment and command of one node, the same on every backend.

Pure functions of the spec. Each node runs ``python -m razor.node <trainer args>``; razor.node
waits for MASTER_ADDR, then runs ``torchrun`` once with the node's rank, and torchrun starts the
built-in trainer or the user's own script (which sees RANK, LOCAL_RANK and WORLD_SIZE as usual).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import format_value
from .node import EXIT_PREEMPTED  # noqa: F401 (re-exported: the one definition is razor.node's)
from .spec import RazorJob, ScaleLR

#: On Kubernetes each pod has its own network namespace, so 'auto' can mean the seed's 29500.
DEFAULT_PORT_K8S = 29500
#: razor.node kills what is left of the training this many seconds before the job's grace
#: (spec.terminationGracePeriodSeconds, the pod's) runs out: it exits on its own, with its message
#: and exit code 75, before the kubelet's SIGKILL.
STOP_GRACE_MARGIN = 10


@dataclass(frozen=True)
class NodeLaunch:
    """What one node runs: its rank, its environment (the contract plus the spec's env) and argv."""

    rank: int
    env: dict[str, str]
    argv: list[str] = field(default_factory=list)


def trainer_args(job: RazorJob) -> list[str]:
    """What torchrun starts on every process: the user's script, or the built-in trainer."""
    spec = job.spec
    if spec.script:
        return [spec.script, *spec.args]
    args = ["-m", "razor_trainer", str(spec.config), "--launcher", "pytorch",
            "--work-dir", str(spec.work_dir), "--resume", spec.resume]
    scale = spec.auto_scale_lr
    if scale is False:
        args.append("--no-auto-scale-lr")
    elif isinstance(scale, ScaleLR):
        if scale.base_gpus is not None:
            args += ["--base-gpus", str(scale.base_gpus)]
        else:
            args += ["--base-batch-size", str(scale.base_batch_size)]
    if spec.cfg_options:
        args.append("--cfg-options")
        args += [f"{key}={format_value(value)}" for key, value in spec.cfg_options.items()]
    return args


def requested_port(job: RazorJob, config: dict[str, Any] | None = None) -> int | None:
    """The port the job itself fixes, if any: ``spec.port``, then ``cfgOptions:
    {dist_params.port: N}`` (the seed's Option 2), then ``dist_params.port`` in the config
    (Option 1). None when it fixes none, or asks for ``auto``."""
    spec = job.spec
    if "port" in spec.model_fields_set:
        return None if spec.port == "auto" else int(spec.port)
    if spec.cfg_options.get("dist_params.port") is not None:
        return int(spec.cfg_options["dist_params.port"])
    if config is not None:
        from .config import config_port

        return config_port(config)
    return None


def fixed_port(job: RazorJob, config: dict[str, Any] | None = None) -> int | None:
    """The port to use on a machine of its own: the requested one, else 29500 (the seed's
    default) unless ``port: auto``; None when razor may choose."""
    port = requested_port(job, config)
    if port is not None or job.spec.port == "auto":
        return port
    return int(job.spec.port)


def stop_grace(termination_grace: int) -> int:
    """``RAZOR_STOP_GRACE``: how long razor.node lets the training processes save a checkpoint
    after a stop signal, within the job's grace."""
    return max(1, termination_grace - STOP_GRACE_MARGIN)


def node_env(job: RazorJob, rank: int, master_addr: str, master_port: int | str,
             attempt: int = 1) -> dict[str, str]:
    """The launcher contract for node ``rank``, followed by the spec's own env."""
    spec = job.spec
    nnodes, nproc = str(spec.nnodes), str(spec.nproc_per_node)
    env = {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "PORT": str(master_port),  # the seed's name for it
        "NNODES": nnodes,
        "NODE_RANK": str(rank),
        "NPROC_PER_NODE": nproc,
        "GPUS_PER_NODE": str(spec.gpus_per_node),
        "PET_NNODES": nnodes,
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": nproc,
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
        "RAZOR_JOB_NAME": job.name,
        "RAZOR_WORK_DIR": str(spec.work_dir),
        "RAZOR_ATTEMPT": str(attempt),
        "RAZOR_MASTER_ADDR_TIMEOUT": str(spec.master_addr_timeout_seconds),
        "RAZOR_STOP_GRACE": str(stop_grace(spec.termination_grace_period_seconds)),
    }
    if spec.gpus_per_node == 0:
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # the seed's way to train on CPU
    env.update(spec.env)
    return env


def node_argv(job: RazorJob, python: str = "python") -> list[str]:
    return [python, "-m", "razor.node", *trainer_args(job)]


def node_launches(job: RazorJob, master_addr: str, master_port: int | str, attempt: int = 1,
                  python: str = "python") -> list[NodeLaunch]:
    argv = node_argv(job, python)
    return [
        NodeLaunch(rank, node_env(job, rank, master_addr, master_port, attempt), argv)
        for rank in range(job.spec.nnodes)
    ]
