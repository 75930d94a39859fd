"""A RazorJob as an sbatch script: pure functions.

One ``srun`` task per node (``--ntasks-per-node=1``) runs ``python -m razor.node``, which runs
torchrun once with ``NODE_RANK=$SLURM_NODEID``; never a task per GPU plus torchrun. The master is
the first host of ``$SLURM_JOB_NODELIST``; the port is derived from the job id unless the spec
fixes one (29500 is not assumed: jobs sharing a node would collide on it). Every value from the spec reaches the script
through ``shlex.quote`` (or a checked ``#SBATCH`` word): nothing in a spec can run as shell.

SLURM sends USR2 to every node ``spec.terminationGracePeriodSeconds`` before the time limit
(``--signal=USR2@<grace>``): razor.node stops the training within RAZOR_STOP_GRACE (the grace
minus 10 s), so the checkpoint is saved and the job requeued before SLURM's SIGTERM and, KillWait
later, SIGKILL.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from .launcher import EXIT_PREEMPTED, node_argv, node_env, requested_port
from .spec import FieldError, RazorJob, SpecError

#: Derived ports: 20000 + job id modulo this span (distinct for jobs submitted near each other).
PORT_BASE, PORT_SPAN = 20000, 20000
#: The contract's variables that the script computes at run time, per node or per job.
RUNTIME_ENV = ("MASTER_ADDR", "PET_MASTER_ADDR", "MASTER_PORT", "PET_MASTER_PORT", "PORT", "NODE_RANK",
               "PET_NODE_RANK", "RAZOR_ATTEMPT")


#: The most seconds before its time limit that sbatch --signal can signal a job.
MAX_SIGNAL_LEAD = 65535


class UnsafeValue(ValueError):
    pass


def time_limit_seconds(limit: str) -> int | None:
    """A SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in
    seconds; None for no limit (``UNLIMITED``, ``INFINITE``, ``0``)."""
    if limit.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:  # hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        seconds = int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 3:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:  # minutes[:seconds]
        seconds = parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)
    return seconds or None


def signal_lead(job: RazorJob) -> int:
    """Seconds before the time limit that SLURM sends USR2 (``--signal=USR2@N``): the job's grace,
    within which razor.node saves the checkpoint and exits 75 (RAZOR_STOP_GRACE, 10 s less) and the
    script requeues the job. SLURM may send it up to 60 s earlier, never later."""
    spec = job.spec
    lead = spec.termination_grace_period_seconds
    errors = []
    if lead > MAX_SIGNAL_LEAD:
        errors.append(FieldError("spec.terminationGracePeriodSeconds",
                                 f"SLURM can signal a job at most {MAX_SIGNAL_LEAD} s before its time limit "
                                 f"(sbatch --signal); got {lead}"))
    limit = time_limit_seconds(spec.slurm.time) if spec.slurm.time else None
    if limit is not None and limit <= lead:
        errors.append(FieldError("spec.slurm.time",
                                 f"the time limit ({spec.slurm.time}, {limit} s) must be longer than "
                                 f"spec.terminationGracePeriodSeconds ({lead} s): SLURM asks the job to "
                                 "checkpoint and stop that long before its limit, so it would stop (and "
                                 "requeue) as soon as it starts"))
    if errors:
        raise SpecError(f"RazorJob {job.name}", errors, "a RazorJob SLURM can run")
    return lead


def _directive_value(field: str, value: str) -> str:
    """A value for an ``#SBATCH`` line: sbatch reads these itself, so no spaces or quotes."""
    if not value or any(c.isspace() or c in "\"'`$\\;" for c in value):
        raise UnsafeValue(f"{field}: {value!r} cannot be passed to sbatch safely "
                          "(no spaces, quotes, $, backslash or ; in this field)")
    return value


def log_dir(job: RazorJob) -> str:
    return str(PurePosixPath(str(job.spec.work_dir)) / "logs")


def script_name(job: RazorJob) -> str:
    return f"razor-{job.name}.sbatch"


def directives(job: RazorJob, cwd: str) -> list[str]:
    spec, sl = job.spec, job.spec.slurm
    logs = log_dir(job)
    if not PurePosixPath(logs).is_absolute():
        logs = str(PurePosixPath(cwd) / logs)
    name = sl.job_name or job.name
    lines = [f"--job-name={name}", f"--nodes={spec.nnodes}", "--ntasks-per-node=1"]
    if spec.gpus_per_node:
        lines.append(f"--gres=gpu:{spec.gpus_per_node}" if sl.gres else f"--gpus-per-node={spec.gpus_per_node}")
    if sl.cpus_per_task:
        lines.append(f"--cpus-per-task={sl.cpus_per_task}")
    for flag, value in (("partition", sl.partition), ("time", sl.time), ("account", sl.account), ("qos", sl.qos)):
        if value:
            lines.append(f"--{flag}={value}")
    lines += [f"--chdir={_directive_value('spec.workingDir', cwd)}",
              f"--output={_directive_value('spec.workDir', logs)}/%x-%j.out",
              f"--error={logs}/%x-%j.err",
              "--open-mode=append",  # a requeued job adds to its logs instead of erasing them
              "--requeue", f"--signal=USR2@{signal_lead(job)}"]
    return [f"#SBATCH {line}" for line in lines]


def render(job: RazorJob, cwd: str, python: str = "python", config: dict | None = None) -> str:
    """The sbatch script for ``job``, run from ``cwd``."""
    spec = job.spec
    port = requested_port(job, config)
    env = node_env(job, 0, "$MASTER_ADDR", "$MASTER_PORT")
    logs = log_dir(job)
    out = ["#!/bin/bash", f"# razorctl submit --slurm: RazorJob {job.name}, {spec.nnodes} node(s) x "
           f"{spec.nproc_per_node} process(es)", *directives(job, cwd), "set -uo pipefail", ""]
    out.append("# The launcher contract (docs/launcher-contract.md).")
    for key, value in env.items():
        if key not in RUNTIME_ENV:
            out.append(f"export {key}={shlex.quote(value)}")
    out += [
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT={port}" if port is not None
        else f"MASTER_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))  # distinct per job",
        'RAZOR_ATTEMPT=$(( ${SLURM_RESTART_COUNT:-0} + 1 ))',
        "export MASTER_ADDR MASTER_PORT RAZOR_ATTEMPT PET_MASTER_ADDR=$MASTER_ADDR PET_MASTER_PORT=$MASTER_PORT "
        "PORT=$MASTER_PORT",
        f"mkdir -p {shlex.quote(logs)}",
        'echo "razor: job $SLURM_JOB_ID attempt $RAZOR_ATTEMPT on $SLURM_JOB_NODELIST, '
        'rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
        "# One task per node; each node's rank is its SLURM_NODEID. razor.node runs torchrun once.",
    ]
    srun = ["srun", "--kill-on-bad-exit=1", "--open-mode=append", *spec.slurm.srun_args,
            f"--output={logs}/%x-%j-node%n.out", f"--error={logs}/%x-%j-node%n.out"]
    rank = 'export NODE_RANK=$SLURM_NODEID PET_NODE_RANK=$SLURM_NODEID; exec "$@"'
    cmd = [*srun, "bash", "-c", rank, "razor-node", *node_argv(job, python)]
    out += [" ".join(shlex.quote(w) for w in cmd), "code=$?",
            f"if [ \"$code\" -eq {EXIT_PREEMPTED} ]; then",
            '  echo "razor: preempted (checkpoint saved): requeueing job $SLURM_JOB_ID"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "fi",
            'exit "$code"', ""]
    return "\n".join(out)
