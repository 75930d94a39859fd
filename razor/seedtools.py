"""The seed's ``tools/slurm_train.sh`` and ``tools/dist_train.sh``, kept working through razor.

    GPUS_PER_NODE=8 GPUS=16 CPUS_PER_TASK=5 SRUN_ARGS="--exclusive" \\
        sh tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [--cfg-options k=v ...]

builds the RazorJob those arguments describe, submits it with ``razorctl submit --slurm``,
follows node 0's log and exits with the job's outcome, as the seed's blocking ``srun`` did.
``GPUS_PER_NODE=0`` trains on CPU with GPUS processes on one node.

    [NNODES=2 NODE_RANK=0 PORT=29500 MASTER_ADDR=host0] sh tools/dist_train.sh CONFIG GPUS [ARGS]

gets the launcher contract of its node from ``python -m razor.seedtools dist-train-env CONFIG
GPUS [ARGS]`` (:func:`dist_train_env`: the seed's variables in, razor.launcher's contract out, as
``export`` lines), then runs ``python -m razor.node`` like every backend.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from pathlib import Path

from .config import ConfigError, config_port, load_config, parse_cfg_options
from .launcher import (CFG_OPTIONS_PORT, CONFIG_PORT, DEFAULT_MASTER_ADDR_TIMEOUT, DEFAULT_STOP_GRACE, JobFacts,
                       Network, RunFacts, contract_env, port_rule)

USAGE = ("usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] sh tools/slurm_train.sh "
         "PARTITION JOB_NAME CONFIG WORK_DIR [--cfg-options KEY=VALUE ...]")


def _int(env: dict[str, str], name: str, default: int, prog: str = "slurm_train.sh") -> int:
    value = env.get(name, "") or str(default)
    if not value.isdigit():
        raise SystemExit(f"{prog}: {name} must be a whole number (got {value!r})")
    return int(value)


def job_from_seed(argv: list[str], env: dict[str, str]) -> dict:
    if len(argv) < 4:
        raise SystemExit(USAGE)
    partition, job_name, config, work_dir, *rest = argv
    options: dict = {}
    if rest:
        if rest[0] not in ("--cfg-options", "--cfg_options"):
            raise SystemExit(f"slurm_train.sh: unknown argument {rest[0]!r}; {USAGE}")
        try:
            options = parse_cfg_options(rest[1:])
        except ConfigError as exc:
            raise SystemExit(f"slurm_train.sh: {exc}") from None
    gpus, per_node = _int(env, "GPUS", 8), _int(env, "GPUS_PER_NODE", 8)
    if gpus < 1:
        raise SystemExit("slurm_train.sh: GPUS must be at least 1")
    if per_node == 0:  # CPU: GPUS processes on one node
        nnodes, gpus_per_node, nproc = 1, 0, gpus
    else:
        nnodes, gpus_per_node = math.ceil(gpus / per_node), min(gpus, per_node)
        nproc = gpus_per_node
    name = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:50].rstrip("-") or "job"
    return {
        "apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": name},
        "spec": {
            "config": config, "workDir": work_dir, "nnodes": nnodes, "gpusPerNode": gpus_per_node,
            "nprocPerNode": nproc, "cfgOptions": options,
            "slurm": {"partition": partition, "jobName": job_name,
                      "cpusPerTask": _int(env, "CPUS_PER_TASK", 5),
                      "srunArgs": shlex.split(env.get("SRUN_ARGS", ""))},
        },
    }


def slurm_train(argv: list[str] | None = None) -> int:
    from .backends import local, slurm
    from .spec import SpecError, parse_job

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        job = parse_job(job_from_seed(argv, dict(os.environ)), "slurm_train.sh arguments")
        config = local.check(job, Path.cwd(), "slurm_train.sh arguments")
        job_id = slurm.submit(job, Path.cwd(), config)
        print(f"razor: SLURM job {job_id} ({job.spec.nnodes} node(s) x {job.spec.nproc_per_node} "
              f"process(es)); logs in {job.spec.work_dir}/logs/", flush=True)
        final = slurm.wait(job_id, timeout=float(os.environ.get("RAZOR_WAIT_TIMEOUT", "864000")))
        log = slurm.log_file(job_id, 0)
        if log.exists():
            sys.stdout.write(log.read_text())
        print(f"razor: {final.describe()}", flush=True)
        return 0 if final.phase == "Succeeded" else 1
    except SpecError as exc:
        print(f"slurm_train.sh: {exc}", file=sys.stderr)
        return 2
    except slurm.SlurmError as exc:
        print(f"slurm_train.sh: {exc}", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- dist_train.sh

DIST_TRAIN = "dist_train.sh"


def _trainer_option(args: list[str], *names: str) -> str | None:
    """The last value of the trainer's option ``names`` in ``args`` (``--opt V`` or ``--opt=V``),
    as its argparse reads it."""
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in names:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
    return value


def _cfg_options(args: list[str]) -> dict:
    """The trainer's ``--cfg-options k=v ...`` in ``args`` (what it cannot parse, it reports)."""
    items: list[str] = []
    taking = False
    for arg in args:
        if arg in ("--cfg-options", "--cfg_options"):
            taking = True
        elif arg.startswith("--"):
            taking = False
        elif taking:
            items.append(arg)
    try:
        return parse_cfg_options(items)
    except ConfigError:
        return {}


def _port(environ: dict[str, str], name: str) -> int | None:
    value = environ.get(name) or ""
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise SystemExit(f"{DIST_TRAIN}: {name} must be a port number (got {value!r})")
    return int(value)


def dist_train_env(argv: list[str], environ: dict[str, str]) -> dict[str, str]:
    """The launcher contract of one node of ``tools/dist_train.sh CONFIG GPUS [ARGS]``, from the
    seed's variables: ``NNODES`` (1), ``NODE_RANK`` (0), ``MASTER_ADDR`` (127.0.0.1), the port by
    the one port rule on this machine (``PORT``, else ``MASTER_PORT``, else the trainer's
    ``--cfg-options dist_params.port``, else the config's ``dist_params.port``, else 29500), GPUS
    processes (with ``CUDA_VISIBLE_DEVICES=-1``: on CPU, and GPUS_PER_NODE 0), the work dir the
    trainer will use (``--work-dir``, else ``work_dirs/<config stem>``). ``RAZOR_JOB_NAME``
    (empty unless given: no job), ``RAZOR_MASTER_ADDR_TIMEOUT``, ``RAZOR_STOP_GRACE`` and ``RAZOR_PROGRESS_TIMEOUT`` (stall
    detection, off unless given) may be given; ``RAZOR_ATTEMPT`` is 1."""
    if len(argv) < 2:
        raise SystemExit(f"usage: sh tools/{DIST_TRAIN} CONFIG GPUS [--work-dir DIR] [--cfg-options KEY=VALUE ...]")
    config, gpus_arg, *args = argv
    if not gpus_arg.isdigit() or int(gpus_arg) < 1:
        raise SystemExit(f"{DIST_TRAIN}: GPUS must be a whole number of at least 1 (got {gpus_arg!r})")
    gpus = int(gpus_arg)
    stem = Path(config).stem
    try:
        config_doc = load_config(config)
    except ConfigError:
        config_doc = None  # the trainer says what is wrong with it
    try:
        from_config = config_port(config_doc) if config_doc is not None else None
    except ConfigError as exc:
        raise SystemExit(f"{DIST_TRAIN}: {config}: {exc}") from None
    port = port_rule([("PORT", _port(environ, "PORT")), ("MASTER_PORT", _port(environ, "MASTER_PORT")),
                      (CFG_OPTIONS_PORT, _cfg_options(args).get("dist_params.port")),
                      (CONFIG_PORT, from_config)], Network.MACHINE)
    job = JobFacts(
        # The seed's commands name no job: the trainer then judges a work dir by its model alone, so
        # `dist_train.sh CONFIG` resumes what trained that model in work_dirs/<config>, as the seed says.
        name=environ.get("RAZOR_JOB_NAME") or "",
        nnodes=_int(environ, "NNODES", 1, DIST_TRAIN),
        nproc_per_node=gpus,
        gpus_per_node=0 if environ.get("CUDA_VISIBLE_DEVICES") == "-1" else gpus,
        work_dir=_trainer_option(args, "--work-dir", "--work_dir") or f"work_dirs/{stem}",
        master_addr_timeout=_int(environ, "RAZOR_MASTER_ADDR_TIMEOUT", DEFAULT_MASTER_ADDR_TIMEOUT, DIST_TRAIN),
        stop_grace=_int(environ, "RAZOR_STOP_GRACE", DEFAULT_STOP_GRACE, DIST_TRAIN),
        progress_timeout=(_int(environ, "RAZOR_PROGRESS_TIMEOUT", 0, DIST_TRAIN)
                          if environ.get("RAZOR_PROGRESS_TIMEOUT") else None),
    )
    run = RunFacts(master_addr=environ.get("MASTER_ADDR") or "127.0.0.1", master_port=str(port.port),
                   node_rank=str(_int(environ, "NODE_RANK", 0, DIST_TRAIN)), attempt="1")
    return contract_env(job, run)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dist-train-env"]:
        env = dist_train_env(argv[1:], dict(os.environ))
        sys.stdout.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        return 0
    if argv[:1] == ["slurm-train"]:
        argv = argv[1:]
    return slurm_train(argv)


if __name__ == "__main__":
    sys.exit(main())
