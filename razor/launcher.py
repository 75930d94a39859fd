"""The launcher contract: the environment and command of one node, the same on every backend.

This module is the contract's one definition. :data:`CONTRACT` names every variable a node gets
and says where its value comes from: the job (its size, name, work dir, timeouts), or a fact of
the run that the backend supplies (:class:`RunFacts`: the master's address, the port, the node's
rank, the attempt). Everything else derives from it:

- :func:`node_env`, the environment of a node on every backend (local processes, pods);
- :data:`RESERVED_ENV` and :func:`env_refusal`, what ``razor.spec`` refuses in ``spec.env`` (and
  so what the CRD's rule refuses: ``razor.spec.CONTRACT_ENV`` is RESERVED_ENV);
- :func:`run_vars`, the variables the SLURM script sets at run time (``razor.slurm``);
- ``tools/dist_train.sh``, which gets the contract from ``razor.seedtools`` (the seed's
  variables in, :func:`contract_env` out).

The one port rule, :func:`job_port` (:func:`port_rule` for the seed's variables), is here too:
every backend calls it.

Each node runs ``python -m razor.node <trainer args>``; razor.node waits for MASTER_ADDR, then
runs ``torchrun`` once with the node's rank, and torchrun starts the built-in trainer or the
user's own script (which sees RANK, LOCAL_RANK and WORLD_SIZE as usual).

Pure, and light to import: the standard library, ``razor.config`` and ``razor.node`` only.
Nothing of ``razor.spec`` is imported at run time (razor.spec takes RESERVED_ENV and
DEFAULT_PORT from here); a RazorJob is only read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .config import ConfigError, config_port, format_value
from .node import EXIT_PREEMPTED  # noqa: F401 (re-exported: the one definition is razor.node's)

if TYPE_CHECKING:
    from .spec import RazorJob

#: The seed's rendezvous port, and spec.port's default.
DEFAULT_PORT = 29500
#: razor.node kills what is left of the training this many seconds before the job's grace
#: (spec.terminationGracePeriodSeconds, the pod's) runs out: it exits on its own, with its message
#: and exit code 75, before the kubelet's SIGKILL.
STOP_GRACE_MARGIN = 10
#: The defaults of spec.masterAddrTimeoutSeconds and spec.terminationGracePeriodSeconds, for a node
#: started without a RazorJob (tools/dist_train.sh).
DEFAULT_MASTER_ADDR_TIMEOUT = 300
DEFAULT_TERMINATION_GRACE = 120


def stop_grace(termination_grace: int) -> int:
    """``RAZOR_STOP_GRACE``: how long razor.node lets the training processes save a checkpoint
    after a stop signal, within the job's grace."""
    return max(1, termination_grace - STOP_GRACE_MARGIN)


DEFAULT_STOP_GRACE = stop_grace(DEFAULT_TERMINATION_GRACE)


# ----------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class JobFacts:
    """What the contract takes from a job: a RazorJob's fields (:meth:`of`), or the seed's
    variables (tools/dist_train.sh)."""

    name: str
    nnodes: int
    nproc_per_node: int
    gpus_per_node: int
    work_dir: str
    master_addr_timeout: int = DEFAULT_MASTER_ADDR_TIMEOUT
    stop_grace: int = DEFAULT_STOP_GRACE
    progress_timeout: int | None = None

    @classmethod
    def of(cls, job: RazorJob) -> "JobFacts":
        spec = job.spec
        return cls(job.name, spec.nnodes, spec.nproc_per_node or 1, spec.gpus_per_node, str(spec.work_dir),
                   spec.master_addr_timeout_seconds, stop_grace(spec.termination_grace_period_seconds),
                   spec.progress_timeout_seconds)


@dataclass(frozen=True)
class RunFacts:
    """What the backend supplies for one node of one attempt. On SLURM these are shell words
    (``$MASTER_ADDR``, ``$SLURM_NODEID``, ...) the script computes at run time."""

    master_addr: str
    master_port: str
    node_rank: str
    attempt: str


#: The facts of a run, by RunFacts field; each is the value of the variables that name it.
RUN_FACTS = ("master_addr", "master_port", "node_rank", "attempt")


@dataclass(frozen=True)
class Var:
    """One variable of the contract: its name, what it means, and where its value comes from:
    ``fact`` (a RunFacts field) or ``of_job`` (a function of the job; None: not set)."""

    name: str
    meaning: str
    fact: str | None = None
    of_job: Callable[[JobFacts], str | None] | None = None
    #: Set (and reserved) only for a CPU job: a job with GPUs may choose its own.
    cpu_only: bool = False

    def value(self, job: JobFacts, run: RunFacts) -> str | None:
        if self.fact is not None:
            return getattr(run, self.fact)
        return self.of_job(job) if self.of_job else None


#: The launcher contract, in the order a node's environment lists it.
CONTRACT: tuple[Var, ...] = (
    Var("MASTER_ADDR", "the master node: `127.0.0.1` locally, `<job>-0.<job>.<namespace>.svc` on "
        "Kubernetes, the first host of the allocation on SLURM", fact="master_addr"),
    Var("MASTER_PORT", "the rendezvous port (the one port rule, [spec.md](spec.md#the-port))",
        fact="master_port"),
    Var("PORT", "the seed's name for `MASTER_PORT`, the same value", fact="master_port"),
    Var("NNODES", "number of nodes", of_job=lambda j: str(j.nnodes)),
    Var("NODE_RANK", "this node's rank, 0 to NNODES-1 (`$SLURM_NODEID` on SLURM)", fact="node_rank"),
    Var("NPROC_PER_NODE", "processes on this node", of_job=lambda j: str(j.nproc_per_node)),
    Var("GPUS_PER_NODE", "GPUs on this node (0: CPU)", of_job=lambda j: str(j.gpus_per_node)),
    Var("PET_NNODES", "torchrun's form of `NNODES`", of_job=lambda j: str(j.nnodes)),
    Var("PET_NODE_RANK", "torchrun's form of `NODE_RANK`", fact="node_rank"),
    Var("PET_NPROC_PER_NODE", "torchrun's form of `NPROC_PER_NODE`", of_job=lambda j: str(j.nproc_per_node)),
    Var("PET_MASTER_ADDR", "torchrun's form of `MASTER_ADDR`", fact="master_addr"),
    Var("PET_MASTER_PORT", "torchrun's form of `MASTER_PORT`", fact="master_port"),
    Var("RAZOR_JOB_NAME", "the job's name", of_job=lambda j: j.name),
    Var("RAZOR_WORK_DIR", "the job's work dir (`spec.workDir`)", of_job=lambda j: j.work_dir),
    Var("RAZOR_ATTEMPT", "which attempt this is: 1, then 2, ... after gang restarts (on SLURM "
        "`SLURM_RESTART_COUNT + 1`)", fact="attempt"),
    Var("RAZOR_MASTER_ADDR_TIMEOUT", "seconds a non-master node waits for `MASTER_ADDR` to resolve "
        "(`spec.masterAddrTimeoutSeconds`)", of_job=lambda j: str(j.master_addr_timeout)),
    Var("RAZOR_STOP_GRACE", "seconds razor.node waits for the training processes after a stop signal "
        "before it kills them: `spec.terminationGracePeriodSeconds` (default 120, on Kubernetes the "
        "pod's grace) minus 10, at least 1, so that the node stops within the pod's grace",
        of_job=lambda j: str(j.stop_grace)),
    Var("RAZOR_PROGRESS_TIMEOUT", "seconds without a progress report from any training process of the node "
        "(counted from the first) after which razor.node stops the training and exits 124, stalled "
        "(`spec.progressTimeoutSeconds`); not set: off", of_job=lambda j: None if j.progress_timeout is None
        else str(j.progress_timeout)),
    Var("CUDA_VISIBLE_DEVICES", "`-1` on a CPU job (`gpusPerNode: 0`), the seed's way to train on CPU; "
        "not set for a job with GPUs", of_job=lambda j: None if j.gpus_per_node else "-1", cpu_only=True),
)
#: What torchrun sets for each training process: no node and no spec.env sets them.
WORKER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
#: What spec.env may never set: every variable of the contract but the CPU-only ones, and the
#: workers'. (razor.spec.CONTRACT_ENV; the CRD's rule is made from it.)
RESERVED_ENV = frozenset({v.name for v in CONTRACT if not v.cpu_only} | set(WORKER_ENV))


def env_refusal(name: str, gpus_per_node: int | None) -> str | None:
    """Why ``spec.env`` may not set ``name`` (for a job with ``gpus_per_node``; None: unknown),
    or None when it may."""
    if name in RESERVED_ENV:
        return f"{name} is set by razor (the launcher contract) and cannot be overridden"
    if gpus_per_node == 0 and any(v.name == name and v.cpu_only for v in CONTRACT):
        return (f"{name} is set by razor for a CPU job (the launcher contract: gpusPerNode 0 means "
                f"{name}=-1) and cannot be overridden; give the job GPUs to choose them")
    return None


def run_vars(fact: str) -> tuple[str, ...]:
    """The contract's variables whose value is the run's ``fact`` (a RunFacts field)."""
    return tuple(v.name for v in CONTRACT if v.fact == fact)


def contract_env(job: JobFacts, run: RunFacts) -> dict[str, str]:
    """Every variable of the contract for one node, in CONTRACT's order."""
    env = {}
    for var in CONTRACT:
        value = var.value(job, run)
        if value is not None:
            env[var.name] = value
    return env


#: How docs/launcher-contract.md names where a value comes from.
_SOURCE = {None: "the job", "master_addr": "the run: the master", "master_port": "the run: the port",
           "node_rank": "the node", "attempt": "the run: the attempt"}


def contract_table() -> str:
    """The contract as the Markdown table of docs/launcher-contract.md (``python -m
    razor.launcher`` prints it; a test keeps the doc current)."""
    rows = ["| variable | value | from |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.meaning} | {_SOURCE[v.fact]} |" for v in CONTRACT]
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- the port rule


class Network(enum.Enum):
    """Where a node listens, which decides the port of a job that fixes none."""

    #: A network namespace of its own (a Kubernetes pod): no other job listens there.
    OWN = "own"
    #: This machine, the user's (submit --local, tools/dist_train.sh): 29500, or a free one for 'auto'.
    MACHINE = "machine"
    #: A SLURM node, shared with the jobs the scheduler puts there: derived from the job id at run time.
    DERIVED = "derived"
    #: A host shared through hostNetwork (Kubernetes): the operator allocates one that no other
    #: live hostNetwork job uses, and its allocation wins over a port the job fixes (a cluster's
    #: default port would otherwise put every hostNetwork job on the same one).
    ALLOCATED = "allocated"


#: Where a job fixes its port, in this order: the field, then the seed's Option 2, then Option 1.
PORT_FIELD = "spec.port"
CFG_OPTIONS_PORT = "spec.cfgOptions.dist_params.port"
CONFIG_PORT = "spec.config (dist_params.port)"


@dataclass(frozen=True)
class PortChoice:
    """The rule's answer: ``port``, or None when the backend picks it as the job starts (a free
    port here, the one SLURM's script derives, the one the operator allocates); ``how``: fixed,
    default, auto, derived or allocated; ``field``: what decided it."""

    port: int | None
    how: str
    field: str = PORT_FIELD

    @property
    def fixed(self) -> bool:
        return self.how == "fixed"


def requested_ports(job: RazorJob, config: dict[str, Any] | None = None) -> list[tuple[str, int | None]]:
    """Where the job fixes its port, in order: ``spec.port``, else ``cfgOptions: {dist_params.port:
    N}``, else ``dist_params.port`` in the config (when it is loaded). A ``port`` given as 'auto'
    fixes none (it wins over the config's)."""
    spec = job.spec
    if "port" in spec.model_fields_set:
        return [] if spec.port == "auto" else [(PORT_FIELD, int(spec.port))]
    out: list[tuple[str, int | None]] = [(CFG_OPTIONS_PORT, spec.cfg_options.get("dist_params.port"))]
    if config is not None:
        try:
            out.append((CONFIG_PORT, config_port(config)))
        except ConfigError as exc:
            from .spec import FieldError, SpecError

            raise SpecError(f"RazorJob {job.name}", [FieldError("spec.config", str(exc))]) from None
    return out


def port_rule(requested: Iterable[tuple[str, int | None]], network: Network, auto: bool = False,
              allocated: int | None = None) -> PortChoice:
    """The one port rule. ``requested``: where the job fixes a port, in order of precedence (the
    first that is not None wins); ``auto``: the job asks razor to choose; ``allocated``: the
    operator's port for a hostNetwork job.

    1. hostNetwork: the operator's allocation (None before it is made);
    2. the port the job fixes, on every backend;
    3. in a network namespace of its own: 29500 (also for 'auto': nothing else listens there);
    4. on a SLURM node: derived from the job id at run time;
    5. on this machine: 29500, or a free one picked as the job starts for 'auto'.
    """
    if network is Network.ALLOCATED:
        return PortChoice(allocated, "allocated", "")
    for where, port in requested:
        if port is not None:
            return PortChoice(int(port), "fixed", where)
    if network is Network.OWN or (network is Network.MACHINE and not auto):
        return PortChoice(DEFAULT_PORT, "default")
    return PortChoice(None, "derived" if network is Network.DERIVED else "auto")


def job_port(job: RazorJob, config: dict[str, Any] | None = None, network: Network = Network.OWN,
             allocated: int | None = None) -> PortChoice:
    """The port of ``job`` (with its ``config`` when loaded) in the backend's ``network``."""
    return port_rule(requested_ports(job, config), network, job.spec.port == "auto", allocated)


# ----------------------------------------------------------------------------- one node


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
    elif scale is not True:  # a ScaleLR: one of baseGPUs, baseBatchSize
        if scale.base_gpus is not None:
            args += ["--base-gpus", str(scale.base_gpus)]
        else:
            args += ["--base-batch-size", str(scale.base_batch_size)]
    if spec.cfg_options:
        args.append("--cfg-options")
        args += [f"{key}={format_value(value)}" for key, value in spec.cfg_options.items()]
    return args


def node_env(job: RazorJob, rank: int | str, master_addr: str, master_port: int | str,
             attempt: int | str = 1) -> dict[str, str]:
    """The launcher contract for node ``rank``, followed by the spec's own env (which cannot set
    any of the contract: razor.spec refuses it, and here the contract wins)."""
    env = contract_env(JobFacts.of(job), RunFacts(master_addr, str(master_port), str(rank), str(attempt)))
    env.update((k, v) for k, v in job.spec.env.items() if k not in env)
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


if __name__ == "__main__":
    print(contract_table(), end="")
