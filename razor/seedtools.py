"""The seed's ``tools/slurm_train.sh``, kept working through the SLURM bridge:

    GPUS_PER_NODE=8 GPUS=16 CPUS_PER_TASK=5 SRUN_ARGS="--exclusive" \\
        sh tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [--cfg-options k=v ...]

It builds the RazorJob those arguments describe, submits it with ``razorctl submit --slurm``,
follows node 0's log and exits with the job's outcome, as the seed's blocking ``srun`` did.
``GPUS_PER_NODE=0`` trains on CPU with GPUS processes on one node.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from pathlib import Path

from .config import ConfigError, parse_cfg_options
from .spec import SpecError, parse_job

USAGE = ("usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] sh tools/slurm_train.sh "
         "PARTITION JOB_NAME CONFIG WORK_DIR [--cfg-options KEY=VALUE ...]")


def _int(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name, "") or str(default)
    if not value.isdigit():
        raise SystemExit(f"slurm_train.sh: {name} must be a whole number (got {value!r})")
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


if __name__ == "__main__":
    sys.exit(slurm_train())
