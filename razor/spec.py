"""The RazorJob spec: one typed model, the single source of truth for every backend.

Everything that reads a RazorJob (razorctl, the local supervisor, the operator, the SLURM
bridge, the CRD generator) goes through :func:`parse_job`. Defaults are filled here and only
here; validation collects every error, each naming the field path and the reason.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# The launcher contract's one definition (razor.launcher imports nothing of this module).
from .launcher import DEFAULT_PORT, RESERVED_ENV, env_refusal

GROUP = "razor.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RazorJob"

#: Seconds before the pods of a lost node are evicted, and then force-deleted (nodeLostTimeoutSeconds).
DEFAULT_NODE_LOST_TIMEOUT = 60
#: The trainer image (images/trainer/Dockerfile): the CUDA build, for GPU jobs.
DEFAULT_IMAGE = "razor-trainer:0.1.0"
#: Its CPU variant (VARIANT=cpu, images/README.md): a CPU job (gpusPerNode 0) that names no
#: image gets this one, not gigabytes of CUDA libraries it would never use.
DEFAULT_CPU_IMAGE = f"{DEFAULT_IMAGE}-cpu"
#: Seconds a pod has to stop after its SIGTERM (the pod's terminationGracePeriodSeconds).
DEFAULT_TERMINATION_GRACE = 120
#: The wait before a restart after a failure, doubled per such restart up to the max (seconds),
#: as a Kubernetes Job's pod failure backoff (10 s, 6 min).
DEFAULT_RESTART_BACKOFF = 10
DEFAULT_RESTART_BACKOFF_MAX = 360
#: The learning rates in configs are for 8 GPUs, as the seed says.
DEFAULT_BASE_GPUS = 8

# A job name becomes a Service name (DNS-1035 label) and pod names "<name>-<rank>" (<= 63).
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 50
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CFG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
SLURM_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$|^(UNLIMITED|INFINITE)$")
SLURM_WORD_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")

#: Variables of the launcher contract: razor sets them, a spec may not (razor.launcher.RESERVED_ENV;
#: a CPU job's CUDA_VISIBLE_DEVICES too, see razor.launcher.env_refusal).
CONTRACT_ENV = RESERVED_ENV


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 32 and c != "\t" for c in value):
        raise ValueError("must not contain newlines or control characters")
    return value


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Job name: pods are <name>-<rank>, the Service is <name>.")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > NAME_MAX:
            raise ValueError(f"must be at most {NAME_MAX} characters (got {len(v)})")
        if not NAME_RE.match(v):
            raise ValueError(
                "must be lower-case letters, digits and '-', start with a letter and end with "
                "a letter or digit (it becomes a DNS name)"
            )
        return v


class ScaleLR(_Model):
    """Learning-rate scaling against a base: ``new_lr = old_lr * total_batch / base_batch``."""

    base_gpus: int | None = Field(None, ge=1, alias="baseGPUs",
                                  description="Number of GPUs the config's lr is for.")
    base_batch_size: int | None = Field(None, ge=1, description="Total batch the config's lr is for.")

    @model_validator(mode="after")
    def _one(self) -> "ScaleLR":
        if (self.base_gpus is None) == (self.base_batch_size is None):
            raise ValueError("give exactly one of baseGPUs or baseBatchSize")
        return self


class Resources(_Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)
    shm_size: str | None = Field(None, description="Size of the memory-backed /dev/shm, e.g. 8Gi.")

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for key, q in v.items():
                q = str(q) if isinstance(q, (int, float)) and not isinstance(q, bool) else q
                if not isinstance(q, str) or not QUANTITY_RE.match(q):
                    raise ValueError(f"{key}: {q!r} is not a quantity such as 4, 500m or 16Gi")
                out[key] = q
            return out
        return v

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str | None) -> str | None:
        if v is not None and not QUANTITY_RE.match(v):
            raise ValueError(f"{v!r} is not a quantity such as 8Gi")
        return v


#: ``--mem``/``--mem-per-gpu`` values: a whole number of megabytes, or with the unit K, M, G or T
#: (``64G``, ``500M``); ``0`` asks for all of a node's memory (``--mem``).
SLURM_SIZE_RE = re.compile(r"^[0-9]+[KMGTkmgt]?$")
#: A node feature in a ``--constraint`` expression (as slurm.conf's ``Features`` names them).
SLURM_FEATURE_RE = re.compile(r"[A-Za-z0-9_.:+-]+")
#: One ``slurm.sbatchArgs`` item: a long option, alone or with ``=value``.
SBATCH_ARG_RE = re.compile(r"^--([a-z][a-z0-9-]*)(=.*)?$", re.DOTALL)
#: Array elements at most in a ``slurm.sweep`` (SLURM's default MaxArraySize is 1001: indexes 0-1000).
SWEEP_MAX = 1000
#: sbatch options razor sets itself, with what sets them instead: a ``slurm.sbatchArgs`` item
#: cannot give them (a second value would silently win over razor's, or break what relies on it).
SBATCH_RAZOR_SETS = {
    "job-name": "razor sets it from slurm.jobName (default metadata.name)",
    "nodes": "razor sets it from spec.nnodes",
    "ntasks": "razor runs one task per node (--ntasks-per-node=1), each running torchrun once",
    "ntasks-per-node": "razor runs one task per node, each running torchrun once",
    "gpus-per-node": "razor sets it from spec.gpusPerNode (slurm.gres: true for --gres=gpu:N)",
    "gpus": "razor asks for GPUs per node from spec.gpusPerNode",
    "gpus-per-task": "razor asks for GPUs per node from spec.gpusPerNode",
    "cpus-per-task": "use slurm.cpusPerTask",
    "partition": "use slurm.partition", "time": "use slurm.time", "account": "use slurm.account",
    "qos": "use slurm.qos", "mem": "use slurm.mem", "mem-per-gpu": "use slurm.memPerGpu",
    "constraint": "use slurm.constraint", "exclusive": "use slurm.exclusive: true",
    "output": "razor writes the logs to <workDir>/logs/ (spec.workDir), made before submission",
    "error": "razor writes the logs to <workDir>/logs/ (spec.workDir), made before submission",
    "open-mode": "razor appends (a requeued attempt adds to its logs)",
    "chdir": "razor runs the job in the directory razorctl runs in",
    "signal": "razor sets it from spec.terminationGracePeriodSeconds",
    "requeue": "razor's failure policy requeues the job itself",
    "no-requeue": "razor's failure policy requeues the job itself",
    "array": "use slurm.sweep (or razorctl submit --slurm --sweep)",
    "comment": "razor keeps the job's restart counters in its Comment",
    "export": "the nodes need the environment the script exports (the launcher contract)",
    "export-file": "the nodes need the environment the script exports (the launcher contract)",
    "wrap": "razor writes the batch script",
    "wait": "sbatch would not return until the job ends: use razorctl wait --slurm",
    "test-only": "nothing would be submitted: use razorctl render --slurm",
    "parsable": "razorctl reads sbatch's answer itself",
}


def check_constraint(expr: str) -> str | None:
    """Why ``expr`` is not a SLURM feature expression (``--constraint``), or None when it is.
    Features joined by ``&`` (and) and ``|`` (or), grouped in ``( )``, a matching or in ``[ ]``
    (not nested), a feature or a group followed by ``*N`` (a node count)."""
    tokens = re.findall(r"[A-Za-z0-9_.:+-]+|\*[0-9]+|[&|()\[\]]|.", expr)
    pos, brackets = 0, 0

    def peek() -> str:
        return tokens[pos] if pos < len(tokens) else ""

    def item() -> str | None:
        nonlocal pos, brackets
        tok = peek()
        if tok in ("(", "["):
            if tok == "[" and brackets:
                return "[ ] cannot be nested"
            pos += 1
            brackets += tok == "["
            why = expression()
            close = ")" if tok == "(" else "]"
            if why:
                return why
            if peek() != close:
                return f"{tok!r} is not closed"
            pos += 1
            brackets -= tok == "["
        elif SLURM_FEATURE_RE.fullmatch(tok or "-!"):
            pos += 1
        else:
            return f"expected a feature name at {tok!r}" if tok else "expected a feature name at the end"
        if peek().startswith("*") and len(peek()) > 1:
            pos += 1
        return None

    def expression() -> str | None:
        nonlocal pos
        why = item()
        while not why and peek() in ("&", "|"):
            pos += 1
            why = item()
        return why

    if not expr:
        return "must not be empty"
    why = expression() or (f"unexpected {peek()!r}" if pos < len(tokens) else None)
    return why and f"{expr!r} is not a SLURM feature expression such as 'a100&ib' or '[rack1|rack2]': {why}"


class Slurm(_Model):
    partition: str | None = None
    job_name: str | None = Field(None, description="Defaults to metadata.name.")
    cpus_per_task: int | None = Field(None, ge=1, le=1024)
    time: str | None = Field(None, description="Time limit: MM, HH:MM:SS or D-HH:MM:SS.")
    account: str | None = None
    qos: str | None = None
    srun_args: list[str] = Field(default_factory=list)
    gres: bool = Field(False, description="Request GPUs with --gres=gpu:N instead of --gpus-per-node.")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines the batch script runs before srun, as written (e.g. module load cuda/12, "
                    "source /shared/venv/bin/activate); the nodes inherit the environment they make.",
    )
    python: str | None = Field(
        None, description="The Python the nodes run razor.node with (a path, or a name found on the PATH "
                          "after setup); default: razorctl's own, which must exist at the same path on every node.",
    )
    mem: Union[int, str, None] = Field(None, description="--mem: memory per node, e.g. 64G, 500M; 0: all of it.")
    mem_per_gpu: Union[int, str, None] = Field(None, description="--mem-per-gpu, e.g. 16G.")
    constraint: str | None = Field(None, description="--constraint: node features, e.g. a100&ib or [rack1|rack2].")
    exclusive: bool = Field(False, description="--exclusive: no other job shares the nodes.")
    sbatch_args: list[str] = Field(
        default_factory=list,
        description="Other sbatch options, each --name or --name=value (not those razor sets itself).",
    )
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="A job array: cfgOptions key -> the values to try; several keys make a grid, each "
                    "element with its own work dir (<workDir>/<index>-<key>=<value>,...).",
    )

    @field_validator("partition", "account", "qos", "job_name")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        if v is not None and not SLURM_WORD_RE.match(v):
            raise ValueError(f"{v!r} may only contain letters, digits and . _ + -")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not SLURM_TIME_RE.match(v):
            raise ValueError(f"{v!r} is not a SLURM time limit such as 30, 04:00:00 or 1-12:00:00")
        return v

    @field_validator("srun_args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for arg in v:
            _no_control_chars(arg)
        return v

    @field_validator("setup")
    @classmethod
    def _setup(cls, v: list[str]) -> list[str]:
        # The user's own shell, run as written: several lines in one item are fine (an if block);
        # only what no shell script can hold is refused.
        for i, line in enumerate(v):
            if "\x00" in line:
                raise ValueError(f"item {i}: must not contain NUL")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path or a command name such as python3")
        return v if v is None else _no_control_chars(v)

    @field_validator("mem", "mem_per_gpu", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if v is not None and (not isinstance(v, str) or not SLURM_SIZE_RE.match(v)):
            raise ValueError(f"{v!r} is not a SLURM memory size such as 64G, 500M or 0 (megabytes without a unit)")
        return v

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, v: str | None) -> str | None:
        why = None if v is None else check_constraint(v)
        if why:
            raise ValueError(why)
        return v

    @field_validator("sbatch_args")
    @classmethod
    def _sbatch_args(cls, v: list[str]) -> list[str]:
        for arg in v:
            m = SBATCH_ARG_RE.match(arg)
            if not m:
                raise ValueError(f"{arg!r} is not one long option such as --mail-type=END or --hold "
                                 "(no short options, one option per item)")
            _no_control_chars(arg)
            name, value = m.group(1), (m.group(2) or "")[1:]
            if name == "gres" and not any(item.strip().startswith("gpu") for item in value.split(",")):
                continue  # other generic resources are the user's; the GPUs are razor's
            if name in SBATCH_RAZOR_SETS:
                raise ValueError(f"{arg!r} is refused: {SBATCH_RAZOR_SETS[name]}")
            # sbatch (getopt_long) takes any unambiguous abbreviation: --node=4 is --nodes=4.
            whole = sorted(r for r in SBATCH_RAZOR_SETS if r.startswith(name))
            if whole:
                raise ValueError(f"{arg!r} is refused: sbatch may read it as --{whole[0]} (an abbreviation), "
                                 f"and {SBATCH_RAZOR_SETS[whole[0]]}")
            if name == "gres":
                raise ValueError(f"{arg!r} is refused: razor asks for the GPUs itself (spec.gpusPerNode, slurm.gres)")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = 1
        for key, values in v.items():
            if not CFG_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a config key such as optimizer.lr")
            if key == "dist_params.port":
                raise ValueError("dist_params.port cannot be swept: each element derives its own port")
            if not values:
                raise ValueError(f"{key}: give at least one value")
            for value in values:
                _check_cfg_value(key, value)
            if len({repr(x) for x in values}) != len(values):
                raise ValueError(f"{key}: a value is given twice (two elements would be the same run)")
            size *= len(values)
        if size > SWEEP_MAX:
            raise ValueError(f"{size} elements; a job array has at most {SWEEP_MAX} (SLURM's MaxArraySize)")
        return v

    @model_validator(mode="after")
    def _memory(self) -> "Slurm":
        given = [f for f, v in (("mem", self.mem), ("memPerGpu", self.mem_per_gpu)) if v is not None]
        given += [f"sbatchArgs {a.split('=')[0]}" for a in self.sbatch_args if a.split("=")[0] == "--mem-per-cpu"]
        if len(given) > 1:
            raise ValueError(f"give one of slurm.mem, slurm.memPerGpu or --mem-per-cpu: sbatch takes one "
                             f"(got {', '.join(given)})")
        return self


class RazorJobSpec(_Model):
    config: str | None = Field(None, description="Trainer config file (YAML), relative to the working directory.")
    nnodes: int = Field(1, ge=1, le=4096, description="Number of nodes (one torchrun each).")
    gpus_per_node: int = Field(0, ge=0, le=64, description="GPUs per node; 0 trains on CPU (gloo).")
    nproc_per_node: int | None = Field(
        None, ge=1, le=256, description="Processes per node; defaults to gpusPerNode, or 1 on CPU."
    )
    port: Union[int, Literal["auto"]] = Field(  # checked by _port before pydantic's own
        DEFAULT_PORT, description="Rendezvous port (MASTER_PORT), or 'auto' to pick a free one."
    )
    work_dir: str | None = Field(None, description="Defaults to work_dirs/<config file stem>.")
    cfg_options: dict[str, Any] = Field(default_factory=dict, description="Config overrides, key.path: value.")
    auto_scale_lr: Union[bool, ScaleLR] = Field(
        True, alias="autoScaleLR", description="Scale the lr by total batch against a base of 8 GPUs."
    )
    resume: str = Field("auto", description="'auto' (last checkpoint in the work dir), 'never', or a checkpoint path.")
    script: str | None = Field(None, description="A user's own script that torchrun runs instead of the trainer.")
    args: list[str] = Field(default_factory=list, description="Arguments for script.")
    image: str | None = Field(
        None, description=f"Container image (Kubernetes); {DEFAULT_IMAGE}, or {DEFAULT_CPU_IMAGE} "
                          "for a CPU job (gpusPerNode 0)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    resources: Resources = Field(default_factory=Resources)
    master_addr_timeout_seconds: int = Field(
        300, ge=0, le=86400, description="How long a non-master node waits for MASTER_ADDR to resolve."
    )
    termination_grace_period_seconds: int = Field(
        DEFAULT_TERMINATION_GRACE, ge=1,
        description="Seconds a node (a pod) has to stop after its SIGTERM (a checkpoint is saved meanwhile); "
                    "razor.node kills what is left of the training 10 s before.",
    )
    progress_timeout_seconds: int | None = Field(
        None, ge=1, le=7 * 86400,
        description="A stall is a failure: when no rank of a node has reported progress for this long "
                    "(counted from the first report), razor.node stops the training with exit code 124, "
                    "which restarts the gang without counting against backoffLimit. Off by default.",
    )
    slurm: Slurm = Field(default_factory=Slurm)
    # Kubernetes: the gang, its restarts and its placement.
    backoff_limit: int = Field(3, ge=0, le=1000, description="Gang restarts after failures before the job fails.")
    permanent_exit_codes: list[int] = Field(
        default_factory=lambda: [2, 126, 127],
        description="Exit codes that fail the job at once, without a restart (2: bad config).",
    )
    retryable_exit_codes: list[int] = Field(
        default_factory=list,
        description="Exit codes (e.g. a collective timeout's) that restart the gang without counting against "
                    "backoffLimit, after the backoff; they win over permanentExitCodes.",
    )
    restart_backoff_seconds: int = Field(
        DEFAULT_RESTART_BACKOFF, ge=0, le=86400,
        description="Wait before a restart after a failure (counted or retryable), doubled with each such "
                    "restart up to restartBackoffMaxSeconds; 0: restart as soon as the old pods are gone.",
    )
    restart_backoff_max_seconds: int = Field(
        DEFAULT_RESTART_BACKOFF_MAX, ge=0, le=86400, description="The longest wait between restarts."
    )
    node_lost_timeout_seconds: int = Field(
        DEFAULT_NODE_LOST_TIMEOUT, ge=1, le=86400,
        description="How long a pod stays on a node that stopped answering (not ready or unreachable) "
                    "before Kubernetes evicts it (its NoExecute tolerations), and how long after its grace "
                    "period a deleted pod may go unconfirmed before the operator force-deletes it.",
    )
    active_deadline_seconds: int | None = Field(None, ge=1, description="Fail the job after this long.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the finished job (and its pods) after this long."
    )
    suspend: bool = Field(False, description="true deletes the pods and keeps the job; false starts it again.")
    host_network: bool = Field(
        False, description="Pods on the host's network (InfiniBand, RDMA); the operator allocates the port."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    gang: Literal["none", "native", "volcano", "coscheduling"] = Field(
        "none",
        description="All-or-nothing scheduling of the job's pods (Kubernetes): none; native (a PodGroup "
                    "scheduling.k8s.io/v1alpha2 with a gang policy, Kubernetes 1.36+ with GenericWorkload and "
                    "GangScheduling on); volcano (a Volcano PodGroup, schedulerName volcano unless the job "
                    "names one); coscheduling (a scheduler-plugins PodGroup). minCount/minMember = nnodes. "
                    "Ignored by --local and --slurm (SLURM allocates all nodes or none).",
    )
    service_account_name: str | None = None
    pod_security_context: dict[str, Any] = Field(
        default_factory=dict,
        description="The pods' securityContext, e.g. fsGroup: 65532 so that the razor-trainer image "
                    "(non-root, 65532) can write to a volume.",
    )
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Pod volumes (data, work dir).")
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, description="Where the volumes go.")
    working_dir: str | None = Field(None, description="The container's working directory (image default).")

    @field_validator("permanent_exit_codes", "retryable_exit_codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        for code in v:
            if not 1 <= code <= 255:
                raise ValueError(f"exit codes are 1 to 255 (got {code})")
        return v

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> int | str:
        if v == "auto":
            return v
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be a port number or 'auto' (got {v!r})")
        if not 1024 <= v <= 65535:
            raise ValueError(f"must be between 1024 and 65535, or 'auto' (got {v})")
        return v

    @field_validator("config", "work_dir", "script")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be empty")
        return _no_control_chars(v)

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for arg in v:
            _no_control_chars(arg)
        return v

    @field_validator("resume")
    @classmethod
    def _resume(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'auto', 'never' or a checkpoint path")
        return _no_control_chars(v)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not an image reference")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, value in v.items():
            if not isinstance(name, str) or not ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            refusal = env_refusal(name, info.data.get("gpus_per_node"))
            if refusal:
                raise ValueError(refusal)
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            if not isinstance(value, str):
                raise ValueError(f"{name}: value must be a string, number or boolean")
            if "\x00" in value:
                raise ValueError(f"{name}: value must not contain NUL")
            out[name] = value
        return out

    @field_validator("cfg_options")
    @classmethod
    def _cfg(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not CFG_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a config key such as optimizer.lr")
            _check_cfg_value(key, value)
        return v

    @model_validator(mode="after")
    def _defaults_and_cross_checks(self) -> "RazorJobSpec":
        if self.config is None and self.script is None:
            raise ValueError("give config (the built-in trainer) or script (your own)")
        if self.args and self.script is None:
            raise ValueError("args is only for script; use cfgOptions to change the trainer's config")
        if self.gpus_per_node and self.nproc_per_node and self.nproc_per_node > self.gpus_per_node:
            raise ValueError(
                f"nprocPerNode ({self.nproc_per_node}) cannot exceed gpusPerNode "
                f"({self.gpus_per_node}): one process per GPU"
            )
        cfg_port = self.cfg_options.get("dist_params.port")
        if cfg_port is not None:
            if not isinstance(cfg_port, int) or isinstance(cfg_port, bool) or not 1024 <= cfg_port <= 65535:
                raise ValueError(f"cfgOptions dist_params.port must be a port number (got {cfg_port!r})")
            if "port" in self.model_fields_set and self.port != cfg_port:
                raise ValueError(
                    f"port ({self.port}) and cfgOptions dist_params.port ({cfg_port}) disagree; give one"
                )
        # Derived defaults, filled in this one place.
        if self.nproc_per_node is None:
            self.nproc_per_node = self.gpus_per_node or 1
        if self.work_dir is None:
            stem = PurePosixPath(self.config or self.script or "job").stem
            self.work_dir = f"work_dirs/{stem}"
        if self.image is None:
            self.image = default_image(self.gpus_per_node)
            self.model_fields_set.discard("image")  # still left out: a cluster may set its own
        return self


def default_image(gpus_per_node: int) -> str:
    """razor's own image for a job that names none: the CUDA build, or for a CPU job its CPU
    variant."""
    return DEFAULT_IMAGE if gpus_per_node else DEFAULT_CPU_IMAGE


def _check_cfg_value(key: str, value: Any, depth: int = 0) -> None:
    if depth > 8:
        raise ValueError(f"{key}: value is nested too deeply")
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        _no_control_chars(value)
        return
    if isinstance(value, list):
        for item in value:
            _check_cfg_value(key, item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{key}: keys must be strings")
            _check_cfg_value(key, item, depth + 1)
        return
    raise ValueError(f"{key}: {type(value).__name__} values are not allowed")


class RazorJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["razor.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["RazorJob"] = KIND
    metadata: Metadata
    spec: RazorJobSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_dict(self, cluster_defaults: bool = False) -> dict[str, Any]:
        """The job as a Kubernetes object, with every default filled in; with
        ``cluster_defaults``, without the CLUSTER_DEFAULTS fields the job leaves out (for the
        cluster to fill in)."""
        doc = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        doc.pop("status", None)
        if cluster_defaults:
            unset = {f.alias or name for name, f in RazorJobSpec.model_fields.items()
                     if name not in self.spec.model_fields_set}
            for key in unset.intersection(CLUSTER_DEFAULTS):
                doc["spec"].pop(key, None)
        return doc


# ----------------------------------------------------------------------------- cluster defaults

#: Spec fields (as written in YAML) a cluster may default for the jobs that leave them out: the
#: operator's ``--defaults`` file, which the Helm chart writes from its ``defaults`` values. The
#: CRD gives these fields no schema default (an API-server default would hide that a job left
#: them out), razorctl does not send them unless the user set them, and where neither the job nor
#: the cluster sets one the model's default above applies, as on every backend.
CLUSTER_DEFAULTS = (
    "image", "port", "backoffLimit", "permanentExitCodes", "masterAddrTimeoutSeconds",
    "terminationGracePeriodSeconds", "activeDeadlineSeconds", "ttlSecondsAfterFinished",
    "nodeSelector", "tolerations", "priorityClassName", "schedulerName", "gang", "serviceAccountName",
    "podSecurityContext", "nodeLostTimeoutSeconds", "retryableExitCodes", "restartBackoffSeconds",
    "restartBackoffMaxSeconds", "progressTimeoutSeconds",
)
#: Spec fields (as written in YAML) that may change while a job exists: they shape no pod, only
#: what the operator does next (the CRD's CEL rules keep every other field as it was created, so
#: that no gang is ever made of pods from two specs).
MUTABLE_FIELDS = (
    "suspend", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "permanentExitCodes",
    "retryableExitCodes", "restartBackoffSeconds", "restartBackoffMaxSeconds",
)
#: A cluster default that is no spec field: the image of the CPU jobs (gpusPerNode 0) that name
#: none. A cluster's ``image`` is then the GPU jobs' (and the CPU jobs' too when it sets no
#: ``cpuImage``); where the cluster sets neither, razor's own (DEFAULT_IMAGE, DEFAULT_CPU_IMAGE).
CPU_IMAGE = "cpuImage"
#: Every key of a cluster's defaults.
CLUSTER_DEFAULT_KEYS = (*CLUSTER_DEFAULTS, CPU_IMAGE)


WHAT_DEFAULTS = "a valid set of RazorJob defaults"


def _probe_defaults(spec: dict[str, Any], source: str, field: str | None = None) -> list[FieldError]:
    """The errors of ``spec`` (cluster defaults) checked as a job's spec fields, each named
    ``defaults.<field>``; with ``field``, every error is named ``defaults.<field>``."""
    probe = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "defaults"},
             "spec": {"config": "defaults.yaml", **spec}}
    try:
        parse_job(probe, source)
    except SpecError as exc:
        return [FieldError(f"defaults.{field}" if field else e.path.replace("spec.", "defaults.", 1),
                           e.message) for e in exc.errors]
    return []


def parse_cluster_defaults(doc: Any, source: str = "defaults") -> dict[str, Any]:
    """Check a cluster's defaults (a mapping of spec fields, and ``cpuImage``, to values); raise
    SpecError naming each bad field as ``defaults.<field>``."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError(source, [FieldError("defaults", f"expected a mapping of spec fields, got "
                                                        f"{type(doc).__name__}")], WHAT_DEFAULTS)
    errors = []
    for key in doc:
        if key not in CLUSTER_DEFAULT_KEYS:
            close = difflib.get_close_matches(str(key), CLUSTER_DEFAULT_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            errors.append(FieldError(f"defaults.{key}", f"is not a field a cluster can default ({hint}"
                                                        f"those are: {', '.join(CLUSTER_DEFAULT_KEYS)})"))
    if not errors:
        errors = _probe_defaults({k: v for k, v in doc.items() if k != CPU_IMAGE}, source)
        if CPU_IMAGE in doc:  # checked as a CPU job's image
            errors += _probe_defaults({"image": doc[CPU_IMAGE]}, source, CPU_IMAGE)
    if errors:
        raise SpecError(source, errors, WHAT_DEFAULTS)
    return dict(doc)


def _is_cpu_job(spec: dict[str, Any]) -> bool:
    gpus = spec.get("gpusPerNode") or 0
    try:
        return int(gpus) == 0
    except (TypeError, ValueError):
        return False  # not a number: parse_job says so


def with_cluster_defaults(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The RazorJob document with the cluster's defaults for the spec fields it leaves out. A
    ``port`` is not added to a job whose cfgOptions give ``dist_params.port`` (that port rules);
    a CPU job that names no image gets the cluster's ``cpuImage`` when it sets one."""
    spec = dict(doc.get("spec") or {})
    for key, value in defaults.items():
        if key in spec or key == CPU_IMAGE:
            continue
        if key == "port" and "dist_params.port" in (spec.get("cfgOptions") or {}):
            continue
        if key == "image" and CPU_IMAGE in defaults and _is_cpu_job(spec):
            continue
        spec[key] = copy.deepcopy(value)
    if "image" not in spec and CPU_IMAGE in defaults and _is_cpu_job(spec):
        spec["image"] = defaults[CPU_IMAGE]
    return {**doc, "spec": spec}


# ----------------------------------------------------------------------------- errors


class FieldError(tuple):
    """(path, message); path is dotted, e.g. ``spec.nnodes``."""

    __slots__ = ()

    def __new__(cls, path: str, message: str) -> "FieldError":
        return super().__new__(cls, (path, message))

    @property
    def path(self) -> str:
        return self[0]

    @property
    def message(self) -> str:
        return self[1]

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A RazorJob that cannot be used; ``errors`` holds every problem found."""

    def __init__(self, source: str, errors: list[FieldError], what: str = "a valid RazorJob"):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source} is not {what}:\n{lines}")


_FRIENDLY = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _known_fields(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(field.alias or name)
    return names


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class whose field list applies at ``loc`` (for 'did you mean')."""
    model: type[BaseModel] | None = RazorJob
    for part in loc:
        if model is None:
            return None
        match = None
        for name, field in model.model_fields.items():
            if part in (name, field.alias):
                match = field
                break
        if match is None:
            return None
        ann = match.annotation
        model = None
        for cand in (Metadata, RazorJobSpec, Resources, Slurm, ScaleLR):
            if ann is cand or cand in getattr(ann, "__args__", ()):
                model = cand
    return model


def _convert(err: dict, doc: Any) -> FieldError:
    # pydantic adds union member tags ('int', 'literal[...]', 'ScaleLR', 'function-after[...]')
    loc = tuple(
        p for p in err["loc"]
        if not (isinstance(p, str) and (p in ("int", "bool", "str") or "[" in p or p == "ScaleLR"))
    )
    path = ".".join(str(p) for p in loc)
    etype = err["type"]
    msg = err["msg"]
    if etype == "extra_forbidden":
        parent = _model_at(loc[:-1])
        msg = "is not a known field"
        if parent is not None:
            close = difflib.get_close_matches(str(loc[-1]), _known_fields(parent), n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
    elif etype in _FRIENDLY:
        msg = _FRIENDLY[etype]
    elif etype == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif etype == "literal_error":
        msg = msg.replace("Input should be", "must be")
    elif etype.startswith(("greater_than", "less_than")):
        msg = msg.replace("Input should be", "must be")
    if "input" in err and etype not in ("missing", "extra_forbidden", "value_error") and not isinstance(
        err["input"], (dict, list)
    ):
        msg += f" (got {err['input']!r})"
    return FieldError(path, msg)


def parse_job(doc: Any, source: str = "RazorJob") -> RazorJob:
    """Validate a parsed RazorJob document; raise SpecError listing every problem."""
    if not isinstance(doc, dict):
        got = "nothing" if doc is None else type(doc).__name__
        raise SpecError(source, [FieldError("", f"expected a RazorJob mapping, got {got}")])
    errors: list[FieldError] = []
    if doc.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND} (got {doc.get('kind')!r})"))
    if doc.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION} (got {doc.get('apiVersion')!r})"))
    try:
        job = RazorJob.model_validate(doc)
    except ValidationError as exc:
        seen = {e.path for e in errors}
        for err in exc.errors():
            if "bool" in err["loc"] and isinstance(err.get("input"), dict):
                continue  # a mapping given for a bool-or-mapping field: the mapping's errors count
            fe = _convert(err, doc)
            if fe.path not in seen:
                errors.append(fe)
                seen.add(fe.path)
        raise SpecError(source, errors) from None
    if errors:
        raise SpecError(source, errors)
    return job


def load_job(path: str | Path) -> RazorJob:
    """Read and validate a RazorJob YAML file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(source, [FieldError("", "file not found")]) from None
    except OSError as exc:
        raise SpecError(source, [FieldError("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecError(source, [FieldError("", "is not UTF-8 text")]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [FieldError("", f"invalid YAML: {where}{problem}")]) from None
    if len(docs) != 1:
        raise SpecError(source, [FieldError("", f"expected one YAML document, found {len(docs)}")])
    return parse_job(docs[0], source)
