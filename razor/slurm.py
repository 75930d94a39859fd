"""A RazorJob as an sbatch script: pure functions.

One ``srun`` task per node (``--ntasks-per-node=1``) runs ``python -m razor.node``, which runs
torchrun once with ``NODE_RANK=$SLURM_NODEID``; never a task per GPU plus torchrun. The master is
the first host of ``$SLURM_JOB_NODELIST``; the port is the one port rule's for a node shared with
other jobs (razor.launcher.job_port, Network.DERIVED): the one the job fixes, else derived from
the job id at run time (29500 is not assumed: jobs sharing a node would collide on it). The
contract's variables come from razor.launcher: those of the job are exported as they are, those of
the run (razor.launcher.RunFacts) are computed by the script. Every value from the spec reaches the
script through ``shlex.quote`` (or a checked ``#SBATCH`` word): nothing in a spec can run as shell;
a value that cannot be an ``#SBATCH`` word is refused (UnsafeValue, a SpecError naming the field).

SLURM sends USR2 to every node ``spec.terminationGracePeriodSeconds`` before the time limit
(``--signal=USR2@<grace>``): razor.node stops the training within RAZOR_STOP_GRACE (the grace
minus 10 s), so the checkpoint is saved and the job requeued before SLURM's SIGTERM and, KillWait
later, SIGKILL.

The failure policy is the same as on every backend (razor.policy): when srun fails, the script
runs ``python -m razor.backends.slurm after-srun`` with the job's policy fields (:func:`policy_argv`),
which requeues the job as its next attempt (``SLURM_RESTART_COUNT`` + 1, ``RAZOR_ATTEMPT`` + 1),
counted or not, after the backoff and without the node of a counted failure, or lets it fail.
srun's own stderr (its report of the tasks that failed, in order) is kept for it in a temporary
file on the batch host, then copied to the job's .err log.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from .launcher import Network, RunFacts, job_port, node_argv, node_env, run_vars
from .spec import FieldError, RazorJob, SpecError

#: Derived ports: 20000 + job id modulo this span (distinct for jobs submitted near each other).
PORT_BASE, PORT_SPAN = 20000, 20000
#: The facts of the run (razor.launcher.RunFacts) as the script has them: shell variables it sets
#: once per job (the first variable of the contract that each fact feeds), and SLURM's node id,
#: which each task reads for itself.
RUN = RunFacts(master_addr="$MASTER_ADDR", master_port="$MASTER_PORT", node_rank="$SLURM_NODEID",
               attempt="$RAZOR_ATTEMPT")
#: What the script computes at run time for the whole job, in this order.
JOB_FACTS = ("master_addr", "master_port", "attempt")

#: The most seconds before its time limit that sbatch --signal can signal a job.
MAX_SIGNAL_LEAD = 65535
WHAT = "a RazorJob SLURM can run"


class UnsafeValue(SpecError):
    """A value sbatch would read itself (an ``#SBATCH`` line) that cannot be passed safely."""

    def __init__(self, job: RazorJob, errors: list[FieldError]):
        super().__init__(f"RazorJob {job.name}", errors, WHAT)


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
        raise SpecError(f"RazorJob {job.name}", errors, WHAT)
    return lead


def _unsafe(field: str, value: str) -> FieldError | None:
    """Why ``value`` cannot be an ``#SBATCH`` value (sbatch reads these itself: no spaces or
    quotes), naming ``field``; None when it can."""
    if not value or any(c.isspace() or c in "\"'`$\\;" for c in value):
        return FieldError(field, f"{value!r} cannot be passed to sbatch safely (no spaces, quotes, $, "
                                 "backslash or ; in this field)")
    return None


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
    unsafe = [e for e in (_unsafe("--chdir (the directory razorctl runs in)", cwd), _unsafe("spec.workDir", logs))
              if e]
    if unsafe:
        raise UnsafeValue(job, unsafe)
    lines += [f"--chdir={cwd}",
              f"--output={logs}/%x-%j.out",
              f"--error={logs}/%x-%j.err",
              "--open-mode=append",  # a requeued job adds to its logs instead of erasing them
              "--requeue", f"--signal=USR2@{signal_lead(job)}"]
    return [f"#SBATCH {line}" for line in lines]


def policy_argv(job: RazorJob, python: str = "python") -> list[str]:
    """What the script runs when srun failed: razor.policy with the job's fields, in the job
    (razor.backends.slurm.after_srun), given srun's exit code and report."""
    spec = job.spec
    return [python, "-m", "razor.backends.slurm", "after-srun", f"--nnodes={spec.nnodes}",
            f"--backoff-limit={spec.backoff_limit}",
            f"--permanent-exit-codes={','.join(map(str, sorted(spec.permanent_exit_codes)))}",
            f"--retryable-exit-codes={','.join(map(str, sorted(spec.retryable_exit_codes)))}",
            f"--restart-backoff-seconds={spec.restart_backoff_seconds}",
            f"--restart-backoff-max-seconds={spec.restart_backoff_max_seconds}"]


def render(job: RazorJob, cwd: str, python: str = "python", config: dict | None = None) -> str:
    """The sbatch script for ``job``, run from ``cwd`` (``config``: the job's config, loaded)."""
    spec = job.spec
    port = job_port(job, config, Network.DERIVED)
    env = node_env(job, RUN.node_rank, RUN.master_addr, RUN.master_port, RUN.attempt)
    computed = {name for fact in (*JOB_FACTS, "node_rank") for name in run_vars(fact)}
    logs = log_dir(job)
    out = ["#!/bin/bash", f"# razorctl submit --slurm: RazorJob {job.name}, {spec.nnodes} node(s) x "
           f"{spec.nproc_per_node} process(es)", *directives(job, cwd), "set -uo pipefail", ""]
    out.append("# The launcher contract (docs/launcher-contract.md).")
    for key, value in env.items():
        if key not in computed:
            out.append(f"export {key}={shlex.quote(value)}")
    first = {fact: run_vars(fact)[0] for fact in JOB_FACTS}  # MASTER_ADDR, MASTER_PORT, RAZOR_ATTEMPT
    out += [
        f'{first["master_addr"]}=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'{first["master_port"]}={port.port}' if port.port is not None
        else f'{first["master_port"]}=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))  # distinct per job',
        f'{first["attempt"]}=$(( ${{SLURM_RESTART_COUNT:-0}} + 1 ))',
        "export " + " ".join(name if name == first[fact] else f"{name}=${first[fact]}"
                             for fact in JOB_FACTS for name in run_vars(fact)),
        f"mkdir -p {shlex.quote(logs)}",
        'echo "razor: job $SLURM_JOB_ID attempt $RAZOR_ATTEMPT on $SLURM_JOB_NODELIST, '
        'rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
        "# One task per node; each node's rank is its SLURM_NODEID. razor.node runs torchrun once.",
    ]
    srun = ["srun", "--kill-on-bad-exit=1", "--open-mode=append", *spec.slurm.srun_args,
            f"--output={logs}/%x-%j-node%n.out", f"--error={logs}/%x-%j-node%n.out"]
    rank = "export " + " ".join(f"{name}={RUN.node_rank}" for name in run_vars("node_rank")) + '; exec "$@"'
    cmd = [*srun, "bash", "-c", rank, "razor-node", *node_argv(job, python)]
    out += ['srun_log=$(mktemp "${TMPDIR:-/tmp}/razor-srun-$SLURM_JOB_ID.XXXXXX")',
            " ".join(shlex.quote(w) for w in cmd) + ' 2>"$srun_log"', "code=$?",
            'cat "$srun_log" >&2  # srun\'s own report of its tasks, in this job\'s .err log',
            "",
            "# A failure: the job's policy (razor.policy, the same on every backend) requeues the job as",
            "# the next attempt (counted against backoffLimit or not, after the backoff, without the node",
            "# that failed) or lets it fail. A rank's exit 75 (preempted, checkpoint saved) is a disruption:",
            "# requeued at once, not counted. scontrol requeue ends this script with SIGTERM: ignored, so",
            "# that the next attempt is set up first.",
            'if [ "$code" -ne 0 ]; then',
            "  trap '' TERM",
            "  " + " ".join(shlex.quote(w) for w in policy_argv(job, python))
            + ' --exit-code "$code" --srun-log "$srun_log"',
            "  code=$?",
            "fi",
            'rm -f "$srun_log"',
            'exit "$code"', ""]
    return "\n".join(out)
