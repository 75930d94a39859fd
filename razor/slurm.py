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
runs ``python -m razor.backends.slurm_job after-srun`` with the job's policy fields (:func:`policy_argv`),
which requeues the job as its next attempt (``SLURM_RESTART_COUNT`` + 1, ``RAZOR_ATTEMPT`` + 1),
counted or not, after the backoff and without the node of a counted failure, or lets it fail.
srun's own stderr (its report of the tasks that failed, in order) is kept for it in a temporary
file on the batch host, then copied to the job's .err log.

``slurm.setup`` is the user's own shell (``module load``, ``source .../activate``), run as
written before srun, so that the nodes inherit the environment it makes; ``slurm.python`` is the
interpreter the nodes run (razorctl's own by default). A sweep (``slurm.sweep``, or
``razorctl submit --slurm --sweep``) is one job array: element ``i`` (``$SLURM_ARRAY_TASK_ID``)
runs with its own cfgOptions and its own work dir (:func:`sweep_elements`), and, being a job of
its own with its own ``SLURM_JOB_ID``, derives its own port.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from .config import format_value, parse_value
from .launcher import Network, RunFacts, job_port, node_argv, node_env, run_vars
from .spec import FieldError, RazorJob, SpecError, parse_job

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


#: What an ``#SBATCH`` value may hold unquoted: sbatch reads these lines itself (no shell), where
#: whitespace ends a value, quotes group, a backslash escapes and an unquoted ``#`` starts a comment.
_SBATCH_PLAIN = re.compile(r"^[^\s\"'\\#]*$")


def sbatch_word(arg: str) -> str:
    """``--name=value`` as an ``#SBATCH`` word: the value in double quotes (``"`` and ``\\``
    escaped with a backslash, as sbatch's own parser reads them) unless it is a plain word. sbatch
    expands nothing there (no ``$``, no backquote), so the value arrives as written."""
    name, eq, value = arg.partition("=")
    if not eq or _SBATCH_PLAIN.match(value):
        return arg
    return f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log_names(job: RazorJob, array: bool) -> tuple[str, str]:
    """The batch log and each node's log, as sbatch and srun patterns (``%x`` the job name, ``%j``
    the job id; in an array ``%A_%a``, the array's id and the element's index)."""
    jid = "%A_%a" if array else "%j"
    return f"%x-{jid}", f"%x-{jid}-node%n"


# ----------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Element:
    """One element of a sweep: its index (``$SLURM_ARRAY_TASK_ID``), its cfgOptions values and
    its own work dir."""

    index: int
    options: dict[str, Any]
    work_dir: str

    def describe(self) -> str:
        return ", ".join(f"{k}={format_value(v)}" for k, v in self.options.items())


#: How long the descriptive part of an element's work dir may get (the index keeps it unique).
_DIR_TEXT_MAX = 80


def element_dir_name(index: int, options: dict[str, Any]) -> str:
    """``<index>-<key>=<value>[,<key>=<value>...]``: the index first, so the names are unique and
    sort as the elements do; what is not a letter, digit or one of ``. _ + - = ,`` becomes ``_``
    (a value with a slash must not make a subfolder)."""
    text = ",".join(f"{k}={format_value(v)}" for k, v in options.items())
    text = re.sub(r"[^A-Za-z0-9._+=,-]", "_", text)[:_DIR_TEXT_MAX]
    return f"{index}-{text}"


def sweep_elements(job: RazorJob) -> list[Element]:
    """The elements of the job's ``slurm.sweep``, in order: the grid of its keys (the last key
    varies fastest); [] for a job without a sweep."""
    sweep = job.spec.slurm.sweep
    if not sweep:
        return []
    base = PurePosixPath(str(job.spec.work_dir))
    out = []
    for i, values in enumerate(itertools.product(*sweep.values())):
        options = dict(zip(sweep, values))
        out.append(Element(i, options, str(base / element_dir_name(i, options))))
    return out


def element_job(job: RazorJob, element: Element) -> RazorJob:
    """The job as element ``element`` runs it: its cfgOptions values over the job's, its work dir."""
    spec = job.spec.model_copy(update={"work_dir": element.work_dir,
                                       "cfg_options": {**job.spec.cfg_options, **element.options}})
    return job.model_copy(update={"spec": spec})


def parse_sweep_args(items: list[str]) -> dict[str, list[Any]]:
    """``razorctl submit --slurm --sweep KEY=V1,V2``: ``{KEY: [V1, V2]}``, each value a scalar read
    as the seed's ``--cfg-options`` values are (razor.config.parse_value: ``0.1`` and ``1e-3``
    numbers, ``true`` a boolean, ``abc`` a string). A malformed item is a SpecError naming
    ``--sweep``."""
    out: dict[str, list[Any]] = {}
    errors = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or not text.strip():
            errors.append(FieldError("--sweep", f"{item!r} is not KEY=V1,V2,... (e.g. optimizer.lr=0.01,0.1)"))
            continue
        values = []
        for word in text.split(","):
            try:
                value = parse_value(word) if word.strip() else None
            except (ValueError, yaml.YAMLError):
                value = None
            if value is None or isinstance(value, (dict, list)):
                errors.append(FieldError("--sweep", f"{item!r}: {word!r} is not a value (an empty value, "
                                                    "a list or a mapping: give those in slurm.sweep)"))
                break
            values.append(value)
        else:
            if key in out:
                errors.append(FieldError("--sweep", f"{key} is given twice"))
            out[key] = values
    if errors:
        raise SpecError("razorctl submit --slurm --sweep", errors, "a sweep")
    return out


def with_sweep(job: RazorJob, items: list[str], source: str = "RazorJob") -> RazorJob:
    """The job with ``--sweep`` items merged into its ``slurm.sweep`` (a key given on the command
    line replaces the spec's values of that key), checked as the spec is."""
    if not items:
        return job
    # Only what the job sets: a default filled in (the port, say) must stay a default.
    doc = job.model_dump(by_alias=True, exclude_unset=True, mode="json")
    slurm = doc["spec"].setdefault("slurm", {})
    slurm["sweep"] = {**slurm.get("sweep", {}), **parse_sweep_args(items)}
    return parse_job(doc, source)


def _check_sweep(job: RazorJob, config: dict | None) -> None:
    """What a sweep needs of the rest of the job: no port shared by its elements (two of them on
    one node would collide), and a trainer or script that gets the values."""
    if not job.spec.slurm.sweep:
        return
    port = job_port(job, config, Network.DERIVED)
    if port.fixed:
        raise SpecError(f"RazorJob {job.name}", [FieldError(
            port.field, f"fixes port {port.port}, but a sweep's elements may share a node: each derives its "
                        "own port from its job id; leave the port out (or set port: auto, which also wins "
                        "over the config's)")], WHAT)


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
    for flag, value in (("partition", sl.partition), ("time", sl.time), ("account", sl.account), ("qos", sl.qos),
                        ("mem", sl.mem), ("mem-per-gpu", sl.mem_per_gpu)):
        if value:
            lines.append(f"--{flag}={value}")
    if sl.constraint:
        lines.append(sbatch_word(f"--constraint={sl.constraint}"))
    if sl.exclusive:
        lines.append("--exclusive")
    elements = sweep_elements(job)
    if elements:
        lines.append(f"--array=0-{len(elements) - 1}")
    lines += [sbatch_word(arg) for arg in sl.sbatch_args]
    unsafe = [e for e in (_unsafe("--chdir (the directory razorctl runs in)", cwd), _unsafe("spec.workDir", logs))
              if e]
    if unsafe:
        raise UnsafeValue(job, unsafe)
    batch_log, _ = log_names(job, bool(elements))
    lines += [f"--chdir={cwd}",
              f"--output={logs}/{batch_log}.out",
              f"--error={logs}/{batch_log}.err",
              "--open-mode=append",  # a requeued job adds to its logs instead of erasing them
              "--requeue", f"--signal=USR2@{signal_lead(job)}"]
    return [f"#SBATCH {line}" for line in lines]


def policy_argv(job: RazorJob, python: str = "python") -> list[str]:
    """What the script runs when srun failed: razor.policy with the job's fields, in the job
    (razor.backends.slurm_job.after_srun), given srun's exit code and report."""
    spec = job.spec
    return [python, "-m", "razor.backends.slurm_job", "after-srun", f"--nnodes={spec.nnodes}",
            f"--backoff-limit={spec.backoff_limit}",
            f"--permanent-exit-codes={','.join(map(str, sorted(spec.permanent_exit_codes)))}",
            f"--retryable-exit-codes={','.join(map(str, sorted(spec.retryable_exit_codes)))}",
            f"--restart-backoff-seconds={spec.restart_backoff_seconds}",
            f"--restart-backoff-max-seconds={spec.restart_backoff_max_seconds}"]


def setup_lines(job: RazorJob) -> list[str]:
    """``slurm.setup`` in the script: each item run as written, in the script's own shell (so a
    ``module load`` or an ``activate`` changes the environment srun passes to the nodes); the
    first that fails (an item's status is its last command's, as in any shell) ends the job, with
    the item named, before anything starts."""
    items = job.spec.slurm.setup
    if not items:
        return []
    out = ["# slurm.setup: the job's own shell lines, run as written, before srun (the nodes inherit the",
           "# environment they make). The first one that fails ends the job.",
           'razor_setup_failed() { echo "razor: slurm.setup item $1 failed with exit code $2; the job does '
           'not start" >&2; exit "$2"; }',
           "set +u  # activate scripts and module files may read unset variables"]
    for i, item in enumerate(items):
        # ":" first: an item of comments only is still a group bash accepts.
        out += ["{ :", item.rstrip("\n"), f"}} || razor_setup_failed {i} $?"]
    out += ["set -u", ""]
    return out


def _sweep_case(job: RazorJob, elements: list[Element], python: str, shared: dict[str, str]) -> list[str]:
    """The script's choice of element ``$SLURM_ARRAY_TASK_ID``: the contract's variables that
    differ between elements (its work dir), RAZOR_SWEEP_INDEX and RAZOR_SWEEP (its values, JSON, for
    a script of the user's own), and ``node``, the command its nodes run."""
    out = ["# The sweep (slurm.sweep): element $SLURM_ARRAY_TASK_ID's cfgOptions and work dir.",
           'case "${SLURM_ARRAY_TASK_ID:-}" in']
    for e in elements:
        ej = element_job(job, e)
        env = node_env(ej, RUN.node_rank, RUN.master_addr, RUN.master_port, RUN.attempt)
        own = {k: v for k, v in env.items() if k in shared and shared[k] != v}
        own["RAZOR_SWEEP_INDEX"] = str(e.index)
        own["RAZOR_SWEEP"] = json.dumps(e.options, separators=(",", ":"))
        out += [f"  {e.index})",
                "    export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in own.items()),
                "    node=(" + " ".join(shlex.quote(w) for w in node_argv(ej, python)) + ")",
                f"    echo {shlex.quote(f'razor: sweep element {e.index} of {len(elements)}: {e.describe()}; work dir {e.work_dir}')}",
                "    ;;"]
    out += ['  *) echo "razor: $SLURM_ARRAY_TASK_ID is not an element of this sweep (0-'
            f'{len(elements) - 1})" >&2; exit 2 ;;',
            "esac",
            ""]
    return out


def render(job: RazorJob, cwd: str, python: str = "python", config: dict | None = None) -> str:
    """The sbatch script for ``job``, run from ``cwd`` (``config``: the job's config, loaded);
    the nodes run ``slurm.python`` when the job names one, else ``python``."""
    spec = job.spec
    python = spec.slurm.python or python
    _check_sweep(job, config)
    elements = sweep_elements(job)
    port = job_port(job, config, Network.DERIVED)
    env = node_env(job, RUN.node_rank, RUN.master_addr, RUN.master_port, RUN.attempt)
    computed = {name for fact in (*JOB_FACTS, "node_rank") for name in run_vars(fact)}
    logs = log_dir(job)
    what = f"{spec.nnodes} node(s) x {spec.nproc_per_node} process(es)"
    if elements:
        what += f", a sweep of {len(elements)} element(s)"
    out = ["#!/bin/bash", f"# razorctl submit --slurm: RazorJob {job.name}, {what}",
           *directives(job, cwd), "set -uo pipefail", "", *setup_lines(job)]
    out.append("# The launcher contract (docs/launcher-contract.md).")
    for key, value in env.items():
        if key not in computed:
            out.append(f"export {key}={shlex.quote(value)}")
    first = {fact: run_vars(fact)[0] for fact in JOB_FACTS}  # MASTER_ADDR, MASTER_PORT, RAZOR_ATTEMPT
    out += [
        f'{first["master_addr"]}=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'{first["master_port"]}={port.port}' if port.port is not None
        else f'{first["master_port"]}=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))  # distinct per job'
             + (" (each element is a job of its own)" if elements else ""),
        f'{first["attempt"]}=$(( ${{SLURM_RESTART_COUNT:-0}} + 1 ))',
        "export " + " ".join(name if name == first[fact] else f"{name}=${first[fact]}"
                             for fact in JOB_FACTS for name in run_vars(fact)),
        f"mkdir -p {shlex.quote(logs)}",
        'echo "razor: job $SLURM_JOB_ID attempt $RAZOR_ATTEMPT on $SLURM_JOB_NODELIST, '
        'rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
    ]
    if elements:
        out += _sweep_case(job, elements, python, env)
    out.append("# One task per node; each node's rank is its SLURM_NODEID. razor.node runs torchrun once.")
    _, node_log = log_names(job, bool(elements))
    srun = ["srun", "--kill-on-bad-exit=1", "--open-mode=append", *spec.slurm.srun_args,
            f"--output={logs}/{node_log}.out", f"--error={logs}/{node_log}.out"]
    rank = "export " + " ".join(f"{name}={RUN.node_rank}" for name in run_vars("node_rank")) + '; exec "$@"'
    words = " ".join(shlex.quote(w) for w in [*srun, "bash", "-c", rank, "razor-node"])
    words += ' "${node[@]}"' if elements else " " + " ".join(shlex.quote(w) for w in node_argv(job, python))
    out += ['srun_log=$(mktemp "${TMPDIR:-/tmp}/razor-srun-$SLURM_JOB_ID.XXXXXX")',
            words + ' 2>"$srun_log"', "code=$?",
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
