"""Kubernetes on a real node: `kubectl apply` of a RazorJob against hand-written pods, and the gang's recovery.

The cluster is tests/kube_node.py's one-node Kubernetes (control plane, kube-scheduler, kubelet,
containerd, CNI, CoreDNS; the node in a network namespace), with the operator image and the CPU
trainer image built by podman as tests/node/conftest.py builds them (podman's layer cache: seconds
when nothing changed) and imported into the node's containerd, and razor installed as a user
installs it: ``helm install razor charts/razor`` (``--wait``) with that operator image and, as the
cluster's CPU image for jobs, that trainer image. Measured, in one run:

1. ``kubectl apply -f`` → first optimizer step, ``--repeat`` pairs after ``--warmup`` untimed
   ones, in alternating order (razor first in even pairs, the baseline first in odd ones):

   - razor: one RazorJob of the README's 2-node CPU knowledge distillation
     (trainer/configs/digits_kd.yaml, ``nnodes: 2``, ``gpusPerNode: 0``, ``cfgOptions:
     {schedule.epochs: E, algorithm.teacher.epochs: T}``, ``env: {OMP_NUM_THREADS: "1"}``), its
     work dir on a hostPath volume (a fresh host folder per run, owned by the images' user 65532,
     as tests/node/test_razorjob.py gives it); the operator makes the Service and the pods;
   - baseline: what a user writes instead, in one file applied by the same one ``kubectl apply
     -f`` call: a headless Service (``publishNotReadyAddresses: true``) and two pods
     ``<name>-0``/``<name>-1`` with ``hostname``/``subdomain``, the same trainer image
     (``imagePullPolicy: Never``: it is already in the node), the same hostPath volume, no
     ServiceAccount token (as razor's pods), the launcher contract's variables typed by hand
     (MASTER_ADDR=<name>-0.<name>.<ns>.svc, MASTER_PORT, NNODES, NODE_RANK, NPROC_PER_NODE,
     CUDA_VISIBLE_DEVICES=-1 and the same OMP_NUM_THREADS=1), and as the command ``torchrun``
     itself (``python -m torch.distributed.run --nnodes=$(NNODES) --node-rank=$(NODE_RANK) ...``)
     with exactly the trainer arguments razor's pods pass (checked against
     razor.launcher.trainer_args before the first run). That is the strongest baseline: it skips
     the image's entrypoint (``python -m razor.node``: the contract's checks, the wait until
     MASTER_ADDR resolves, signal forwarding) and any operator.

   The clock starts (``time.time()``) just before ``kubectl apply`` is spawned; the first
   optimizer step is the trainer's ``first_step_time`` (a ``time.time()`` stamp in
   ``<work dir>/summary.json``, as benchmarks/launch_overhead.py reads it; the node's processes
   share this host's clock). Also per run, from the API server polled every 0.2 s: both pods exist,
   both Running, both Succeeded; and the apply command's own wall time.

2. Gang recovery, ``--recovery-repeat`` times: a razor job as in (1) with
   ``schedule.epochs=--recovery-epochs`` is applied; once the student has a checkpoint, rank 1's
   training process is SIGKILLed, as tests/node/test_razorjob.py does (worker_pids(): the
   torchrun worker with the job's contract variables in its environment), as the OOM killer
   would. Measured from rank 1's container exit (its main process, ``python -m razor.node``,
   gone from the node's process table, checked every 5 ms) to every rank back at a training step:
   the first optimizer step of attempt 2, after it resumed from the last checkpoint
   (``first_step_time`` of the summary that attempt writes; a DDP step needs every rank's
   gradients, so rank 0's first step is every rank's). Split into: SIGKILL → container exit, →
   the operator's status says attempt 2, → rank 0's container exited too, → both pods of attempt
   2 Running, → first optimizer step.

Before every timed run the machine's CPUs are left to go quiet (under 20% busy over 2 s, the
cluster's own background included; waited for up to ``--quiet-timeout``, then the run goes on and
the report says so), and the previous run's objects are deleted and gone. Target of (1):
razor/baseline ≤ 1.15x, "met" only when every pair's ratio clears it (the ratio's whole min–max
range), not only the medians'.

    .venv/bin/python benchmarks/k8s_node.py [--repeat 5] [--warmup 1] [--recovery-repeat 3]
        [--epochs 3] [--teacher-epochs 1] [--recovery-epochs 20] [--no-build] [--keep DIR]

Needs root, the binaries of scripts/k8s-binaries.sh and scripts/node-tools.sh, podman and
helm (make test sets them up), and no other node cluster running on the machine
(tests/kube_node.py's lock: ``pytest tests/node`` and this benchmark take turns).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import glob
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from common import ROOT, BenchError, median, outcome, spread, verdict, wait_for

sys.path.insert(0, str(ROOT / "tests"))  # kube_node, and the tests' image and helm helpers

TARGET = 1.15          # razor/baseline of kubectl apply → first optimizer step, at most
UID = 65532            # the images' user (tests/node/test_razorjob.py)
CONFIG = "trainer/configs/digits_kd.yaml"
EPOCHS, TEACHER_EPOCHS, RECOVERY_EPOCHS = 3, 1, 20
PORT = 29500
RELEASE, SYSTEM_NS = "razor", "razor-system"   # as tests/node/conftest.py installs it
NS_RAZOR, NS_BASE, NS_RECOVERY = "bench-razor", "bench-baseline", "bench-recovery"
POLL = 0.2             # seconds between the API polls
PROC_POLL = 0.005      # seconds between the checks of a container's main process
QUIET_TIMEOUT = 60.0   # seconds to wait for quiet CPUs before a run
QUIET_BUSY = 0.20      # "quiet": under this share of all CPUs busy over QUIET_WINDOW seconds
QUIET_WINDOW = 2.0
DISTURBED = 0.25       # other work of more than this share of the job's own CPU marks a run disturbed
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMMAND = ".venv/bin/python benchmarks/k8s_node.py"
TITLE = ("Kubernetes on a real node: `kubectl apply` of a RazorJob vs hand-written pods, "
         "and gang recovery")

#: Moments of the gang's recovery after rank 1's container exit: (key, label). Each is timed from
#: that exit (rank 0 may stop on its own before the operator restarts the gang, or after).
STAGES = (
    ("restart", "the operator's status says attempt 2"),
    ("gang_down", "every container of attempt 1 has exited"),
    ("running", "both pods of attempt 2 Running"),
    ("step", "first optimizer step of attempt 2"),
)


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Launch:
    side: str            # "razor" or "baseline"
    first_step: float    # kubectl apply spawned → first optimizer step
    apply: float         # the kubectl apply command's wall time
    created: float       # → both pods exist (API, polled)
    running: float       # → both pods Running
    end: float           # → both pods Succeeded
    busy_before: float   # share of the machine's CPUs busy in the QUIET_WINDOW before
    cpu: float = 0.0     # CPU seconds the whole machine used, apply → both pods Succeeded
    dns_misses: int = 0  # log lines of a failed lookup of MASTER_ADDR (razor.node's wait, torch's retries)
    pods_cpu: float | None = None      # CPU seconds of the two pods (their cgroups, last sample)
    operator_cpu: float | None = None  # CPU seconds of razor-operator in that span (razor only)

    @property
    def rest_cpu(self) -> float | None:
        """The machine's CPU seconds less the pods' and the operator's: the cluster's own
        processes, the benchmark, and any other work on the machine."""
        if self.pods_cpu is None:
            return None
        return self.cpu - self.pods_cpu - (self.operator_cpu or 0.0)


@dataclass(frozen=True)
class Recovery:
    total: float                 # rank 1's container exit → first optimizer step of attempt 2
    kill_to_exit: float          # SIGKILL of rank 1's training process → its container's exit
    stages: dict[str, float]     # see STAGES: each from rank 1's container exit
    killed_at_epoch: int         # the student's last checkpoint when rank 1 was killed
    message: str                 # the job's status message once it restarted
    busy_before: float


@dataclass
class Result:
    epochs: int
    teacher_epochs: int
    recovery_epochs: int
    warmup: int
    razor: list[Launch] = field(default_factory=list)
    baseline: list[Launch] = field(default_factory=list)
    pairs: list[tuple[Launch, Launch]] = field(default_factory=list)  # (razor, baseline), same pair
    recovery: list[Recovery] = field(default_factory=list)
    k8s_version: str = ""
    cluster_start: float = 0.0
    helm_install: float = 0.0
    images: str = ""
    date: str = ""
    load_before: str = ""
    load_after: str = ""
    command: str = COMMAND
    notes: list[str] = field(default_factory=list)

    def med(self, side: str, attr: str) -> float:
        return median([getattr(s, attr) for s in getattr(self, side)])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Result":
        """A result save() wrote (``--report``: the report again, without measuring)."""
        d = json.loads(path.read_text())
        r = cls(**{k: v for k, v in d.items() if k not in ("razor", "baseline", "pairs", "recovery")})
        r.razor = [Launch(**x) for x in d["razor"]]
        r.baseline = [Launch(**x) for x in d["baseline"]]
        r.pairs = [(Launch(**a), Launch(**b)) for a, b in d["pairs"]]
        r.recovery = [Recovery(**x) for x in d["recovery"]]
        return r

    def ratio(self, attr: str = "first_step") -> float:
        """razor/baseline of the medians."""
        return self.med("razor", attr) / self.med("baseline", attr)

    def pair_ratios(self, attr: str = "first_step") -> list[float]:
        return [getattr(r, attr) / getattr(b, attr) for r, b in self.pairs]

    @staticmethod
    def is_disturbed(run: Launch, least_rest: float | None, least_cpu: float, pods: float) -> bool:
        """Whether other work shared the machine during ``run``: the CPU seconds outside the job's
        pods and the operator (or, without the cgroups' numbers, the machine's) exceed the least
        of all runs by more than DISTURBED of what the job's pods use."""
        if run.rest_cpu is not None and least_rest is not None:
            return run.rest_cpu - least_rest > DISTURBED * pods
        return run.cpu > least_cpu * (1 + DISTURBED)

    def disturbance(self) -> tuple[float | None, float, float]:
        runs = self.razor + self.baseline
        rests = [s.rest_cpu for s in runs if s.rest_cpu is not None]
        pods = [s.pods_cpu for s in runs if s.pods_cpu is not None]
        return (min(rests) if len(rests) == len(runs) else None, min(s.cpu for s in runs),
                median(pods) if pods else 0.0)

    def disturbed(self) -> list[str]:
        """The runs other work disturbed, by side ("razor runs 1, 3 (12–18 CPU s ...)"; see
        is_disturbed)."""
        least_rest, least_cpu, pods = self.disturbance()
        out = []
        for side in ("razor", "baseline"):
            hit = [(i + 1, s) for i, s in enumerate(getattr(self, side))
                   if self.is_disturbed(s, least_rest, least_cpu, pods)]
            if not hit:
                continue
            runs = ", ".join(str(i) for i, _ in hit)
            if least_rest is not None:
                extra = [s.rest_cpu for _, s in hit]
                what = f"{min(extra):.0f}–{max(extra):.0f}" if len(extra) > 1 else f"{extra[0]:.0f}"
                out.append(f"{side} run{'s' if len(hit) > 1 else ''} {runs} ({what} CPU s outside the pods "
                           f"and the operator, against {least_rest:.1f} in the leanest run)")
            else:
                out.append(f"{side} run{'s' if len(hit) > 1 else ''} {runs} "
                           f"(up to {max(s.cpu for _, s in hit):.0f} machine CPU s against {least_cpu:.0f})")
        return out

    def quiet_pairs(self) -> list[tuple[Launch, Launch]]:
        """The pairs in which neither run was disturbed."""
        least_rest, least_cpu, pods = self.disturbance()
        return [(a, b) for a, b in self.pairs
                if not any(self.is_disturbed(x, least_rest, least_cpu, pods) for x in (a, b))]

    @property
    def met(self) -> bool:
        """Every pair's ratio within the target (so its whole min–max range), and the medians'."""
        return bool(self.pairs) and max(self.pair_ratios() + [self.ratio()]) <= TARGET


# ------------------------------------------------------------------------------------ helpers


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_ticks() -> tuple[int, int]:
    """(all, busy) CPU ticks of the machine since boot (/proc/stat; busy: user, nice, system,
    irq, softirq, steal)."""
    with open("/proc/stat") as fh:
        t = [int(x) for x in fh.readline().split()[1:9]]
    return sum(t), t[0] + t[1] + t[2] + t[5] + t[6] + t[7]


def cpu_busy(seconds: float) -> float:
    total0, busy0 = cpu_ticks()
    time.sleep(seconds)
    total1, busy1 = cpu_ticks()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(timeout: float) -> tuple[bool, float]:
    """Wait until the CPUs are quiet; (whether they are, the last window's busy share)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = cpu_busy(QUIET_WINDOW)
        if busy < QUIET_BUSY or time.monotonic() >= deadline:
            return busy < QUIET_BUSY, busy


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = POLL) -> Any:
    return wait_for(check, timeout, what, interval)


def _proc_env(pid: int | str) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)


def node_main_pid(job: str, rank: int, attempt: int = 1) -> int | None:
    """The main process of one rank's container (the image's entrypoint, ``python -m
    razor.node``), found as any process on the node: by the contract's variables in its
    environment and its command line (torchrun and its workers have the same variables)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = _proc_env(proc.name)
            if (env.get("RAZOR_JOB_NAME") != job or env.get("NODE_RANK") != str(rank)
                    or env.get("RAZOR_ATTEMPT") != str(attempt) or "LOCAL_RANK" in env):
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"razor.node" in argv:
            return int(proc.name)
    return None


def pod_cpu(uid: str) -> float | None:
    """CPU seconds a pod has used so far, from its cgroup (cgroup v1 cpuacct or v2 cpu.stat, as
    the kubelet's cgroupfs driver names it); None when it has none (any more)."""
    for pattern, v2 in ((f"/sys/fs/cgroup/cpuacct/kubepods*/**/pod{uid}/cpuacct.usage", False),
                        (f"/sys/fs/cgroup/kubepods*/**/pod{uid}/cpu.stat", True)):
        for path in glob.glob(pattern, recursive=True):
            try:
                text = Path(path).read_text()
            except OSError:
                continue
            if not v2:
                return int(text) / 1e9
            for line in text.splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
    return None


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def operator_pid() -> int | None:
    """razor-operator's process (in its pod), found by its command line."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"razor-operator" in argv or b"razor_operator" in argv:
            return int(proc.name)
    return None


def gone(pid: int) -> bool:
    """Whether the process has exited (gone, or a zombie not yet reaped by its container's shim)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class Api:
    """GETs to the API server as the admin over one kept-alive HTTPS connection (cheap enough to
    poll every 0.2 s without a kubectl process each time)."""

    def __init__(self, cp) -> None:
        url = urllib.parse.urlsplit(cp.server)
        self.host, self.port = url.hostname, url.port
        self.ctx = ssl.create_default_context(cafile=str(cp.ca_file))
        self.headers = {"Authorization": f"Bearer {cp.token}", "Accept": "application/json"}
        self.conn: http.client.HTTPSConnection | None = None

    def get(self, path: str) -> dict | None:
        """The object (a dict), or None for 404."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
            try:
                self.conn.request("GET", path, headers=self.headers)
                resp = self.conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise BenchError(f"GET {path}: HTTP {resp.status}: {body[:500]!r}")
            return json.loads(body)
        return None

    def pods(self, ns: str, selector: str) -> list[dict]:
        q = urllib.parse.urlencode({"labelSelector": selector})
        return (self.get(f"/api/v1/namespaces/{ns}/pods?{q}") or {}).get("items", [])

    def job(self, ns: str, name: str) -> dict | None:
        return self.get(f"/apis/razor.dev/v1alpha1/namespaces/{ns}/razorjobs/{name}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _phases(pods: list[dict]) -> list[str]:
    return [(p.get("status") or {}).get("phase", "?") for p in pods]


# ------------------------------------------------------------------------------------ the jobs


def razor_job(name: str, results: Path, epochs: int, teacher_epochs: int) -> dict:
    """The README's 2-node CPU KD job, its work dir on a hostPath volume (tests/node's kd_job),
    one OpenMP thread per process."""
    return {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": name},
            "spec": {"config": CONFIG, "nnodes": 2, "gpusPerNode": 0, "workDir": f"/results/{name}",
                     "cfgOptions": {"schedule.epochs": epochs, "algorithm.teacher.epochs": teacher_epochs},
                     "env": {"OMP_NUM_THREADS": "1"},
                     # Recovery measures the mechanism: no wait before a counted restart (the
                     # default restartBackoffSeconds, 10 s, comes on top of it).
                     "restartBackoffSeconds": 0,
                     "volumes": [{"name": "results", "hostPath": {"path": str(results), "type": "Directory"}}],
                     "volumeMounts": [{"name": "results", "mountPath": "/results"}]}}


#: What a user writes without razor: a headless Service and one pod per node, typed by hand.
BASELINE = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    app: {name}
  ports:
  - name: rendezvous
    port: {port}
"""

BASELINE_POD = """\
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}-{rank}
  labels:
    app: {name}
spec:
  hostname: {name}-{rank}
  subdomain: {name}
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: trainer
    image: {image}
    imagePullPolicy: Never
    command: [python, -m, torch.distributed.run, --nnodes=$(NNODES), --node-rank=$(NODE_RANK),
              --nproc-per-node=$(NPROC_PER_NODE), --master-addr=$(MASTER_ADDR), --master-port=$(MASTER_PORT)]
    args: [-m, razor_trainer, {config}, --launcher, pytorch, --work-dir, /results/{name},
           --resume, auto, --cfg-options, schedule.epochs={epochs}, algorithm.teacher.epochs={teacher_epochs}]
    env:
    - {{name: MASTER_ADDR, value: {name}-0.{name}.{ns}.svc}}
    - {{name: MASTER_PORT, value: "{port}"}}
    - {{name: NNODES, value: "2"}}
    - {{name: NODE_RANK, value: "{rank}"}}
    - {{name: NPROC_PER_NODE, value: "1"}}
    - {{name: CUDA_VISIBLE_DEVICES, value: "-1"}}
    - {{name: OMP_NUM_THREADS, value: "1"}}
    volumeMounts:
    - {{name: results, mountPath: /results}}
  volumes:
  - name: results
    hostPath: {{path: {results}, type: Directory}}
"""


def baseline_yaml(name: str, ns: str, results: Path, image: str, epochs: int, teacher_epochs: int) -> str:
    fill = dict(name=name, ns=ns, results=results, image=image, epochs=epochs,
                teacher_epochs=teacher_epochs, config=CONFIG, port=PORT)
    return BASELINE.format(**fill) + "".join(BASELINE_POD.format(rank=r, **fill) for r in (0, 1))


def check_same_arguments(epochs: int, teacher_epochs: int, image: str) -> None:
    """The baseline's pods run torchrun with exactly the trainer arguments razor's pods pass."""
    from razor.launcher import trainer_args
    from razor.spec import parse_job

    job = parse_job(razor_job("same", Path("/x"), epochs, teacher_epochs))
    theirs = trainer_args(job)
    docs = list(yaml.safe_load_all(baseline_yaml("same", "ns", Path("/x"), image, epochs, teacher_epochs)))
    ours = docs[1]["spec"]["containers"][0]["args"]
    if ours != theirs:
        raise BenchError(f"the baseline's trainer arguments {ours} are not razor's {theirs}")


# ------------------------------------------------------------------------------------ the bench


def _pytest_failure(exc: BaseException) -> BenchError:
    return BenchError(f"{type(exc).__name__}: {exc}")


def build_images(progress: Callable[[str], None]) -> tuple[str, str]:
    """The operator image and the CPU trainer image, built as tests/node/conftest.py builds them."""
    from images.conftest import BASE_SCRIPT, OPERATOR_TAG, TRAINER_TAG, WHEELS_SCRIPT, _script, build

    t0 = time.monotonic()
    try:  # the tests' helpers end with pytest.fail (a BaseException)
        base = _script(BASE_SCRIPT, timeout=1800)
        wheels = Path(_script(WHEELS_SCRIPT, timeout=3600))
        build("images/operator/Dockerfile", OPERATOR_TAG, base, wheels)
        build("images/trainer/Dockerfile", TRAINER_TAG, base, wheels, "VARIANT=cpu")
    except Exception:
        raise
    except BaseException as exc:
        if type(exc).__module__.startswith("_pytest"):
            raise _pytest_failure(exc) from None
        raise
    progress(f"k8s node: images built in {time.monotonic() - t0:.0f}s (podman's layer cache)")
    return OPERATOR_TAG, TRAINER_TAG


def check_no_other_cluster() -> None:
    """Fail at once, before any build, when a node cluster (pytest tests/node) runs."""
    from kube_node import RUN_DIR

    if not (RUN_DIR / "lock").exists():
        return
    fd = os.open(RUN_DIR / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise BenchError(f"another test cluster with a node runs on this machine ({RUN_DIR}/lock): "
                         "wait for it (pytest tests/node?) and run the benchmark again") from None
    finally:
        os.close(fd)


class Bench:
    def __init__(self, cluster, api: Api, tmp: Path, trainer_image: str, result: Result,
                 quiet_timeout: float, timeout: float, progress: Callable[[str], None]) -> None:
        self.c, self.api, self.tmp, self.image = cluster, api, tmp, trainer_image
        self.r, self.quiet_timeout, self.timeout, self.progress = result, quiet_timeout, timeout, progress

    # ---- plumbing
    def kubectl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.c.kubectl(*args, timeout=timeout)

    def namespace(self, ns: str) -> None:
        self.kubectl("create", "namespace", ns)
        _wait(lambda: self.api.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 30,
              f"the default ServiceAccount of {ns}")

    def results(self, name: str) -> Path:
        d = self.tmp / "results" / name
        d.mkdir(parents=True)
        os.chown(d, UID, UID)
        return d

    def quiet(self, what: str) -> float:
        ok, busy = wait_quiet(self.quiet_timeout)
        if not ok:
            self.r.notes.append(f"{what}: the CPUs were still {busy:.0%} busy after "
                                f"{self.quiet_timeout:.0f}s; ran anyway")
            self.progress(f"k8s node: {self.r.notes[-1]}")
        return busy

    def logs(self, ns: str, pods: list[dict]) -> str:
        out = []
        for p in pods:
            name = p["metadata"]["name"]
            text = self.c.kubectl("logs", "-n", ns, name, "--tail=25", check=False).stdout
            out.append(f"--- {name} ({(p.get('status') or {}).get('phase')}):\n{text}")
        return "\n".join(out)

    def save_logs(self, ns: str, name: str) -> int:
        """Both ranks' container logs, with the kubelet's timestamps, into <tmp>/logs (kept with
        --keep, or when the benchmark fails); how many of their lines say a lookup of MASTER_ADDR
        failed (razor.node: "waiting for MASTER_ADDR"; torch's store client: "gai error")."""
        d = self.tmp / "logs"
        d.mkdir(exist_ok=True)
        misses = 0
        for rank in (0, 1):
            out = self.c.kubectl("logs", "-n", ns, f"{name}-{rank}", "--timestamps", check=False)
            (d / f"{name}-{rank}.log").write_text(out.stdout + out.stderr)
            misses += sum("waiting for MASTER_ADDR" in line or "gai error" in line
                          for line in out.stdout.splitlines())
        return misses

    def apply(self, path: Path, ns: str) -> tuple[float, float]:
        """``kubectl apply -f``: (time.time() just before it was spawned, its wall time)."""
        kubectl = [str(self.c.cp.bin_dir / "kubectl"), f"--kubeconfig={self.c.cp.kubeconfig}"]
        env = self.c.env()
        t0, tic = time.time(), time.monotonic()
        out = subprocess.run([*kubectl, "apply", "-n", ns, "-f", str(path)], env=env,
                             capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - tic
        if out.returncode != 0:
            raise BenchError(f"kubectl apply -f {path} exited {out.returncode}: {out.stderr.strip()}")
        return t0, seconds

    def summary(self, name: str) -> dict:
        path = self.tmp / "results" / name / name / "summary.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"no summary of the job {name} ({path}): {exc}") from None

    def first_step(self, name: str) -> float:
        s = self.summary(name)
        if s.get("first_step_time") is None:
            raise BenchError(f"the summary of {name} has no first_step_time")
        if s.get("world_size") != 2 or len(set(s.get("weights_digests") or [1, 2])) != 1:
            raise BenchError(f"the job {name} did not train on 2 ranks to identical weights: {s}")
        return float(s["first_step_time"])

    # ---- (1) kubectl apply → first optimizer step
    def launch(self, side: str, name: str) -> Launch:
        ns = NS_RAZOR if side == "razor" else NS_BASE
        results = self.results(name)
        path = self.tmp / f"{name}.yaml"
        if side == "razor":
            path.write_text(yaml.safe_dump(razor_job(name, results, self.r.epochs, self.r.teacher_epochs),
                                           sort_keys=False))
            selector = f"razor.dev/job-name={name}"
        else:
            path.write_text(baseline_yaml(name, ns, results, self.image, self.r.epochs, self.r.teacher_epochs))
            selector = f"app={name}"
        busy = self.quiet(name)
        op = operator_pid() if side == "razor" else None
        op0 = process_cpu(op) if op else None
        ticks0 = cpu_ticks()[1]
        t0, apply_seconds = self.apply(path, ns)
        seen: dict[str, float] = {}
        pods_cpu: dict[str, float] = {}
        deadline = time.monotonic() + self.timeout
        while "end" not in seen:
            pods = self.api.pods(ns, selector)
            now = time.time()
            phases = _phases(pods)
            for p in pods:
                used = pod_cpu(p["metadata"]["uid"])
                if used is not None:
                    pods_cpu[p["metadata"]["uid"]] = used
            if len(pods) == 2:
                seen.setdefault("created", now)
                if all(ph in ("Running", "Succeeded") for ph in phases):
                    seen.setdefault("running", now)
                if all(ph == "Succeeded" for ph in phases):
                    seen.setdefault("running", now)
                    seen["end"] = now
                    cpu = (cpu_ticks()[1] - ticks0) / CLK_TCK
                    op1 = process_cpu(op) if op else None
            if "Failed" in phases:
                raise BenchError(f"{side} run {name}: a pod failed:\n{self.logs(ns, pods)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{side} run {name}: not done after {self.timeout:g}s (pods: {phases})\n"
                                 f"{self.logs(ns, pods)}")
            time.sleep(POLL)
        step = self.first_step(name) - t0
        misses = self.save_logs(ns, name)
        if side == "razor":
            _wait(lambda: ((self.api.job(ns, name) or {}).get("status") or {}).get("phase") == "Succeeded",
                  60, f"the RazorJob {name} to be Succeeded")
            self.kubectl("delete", "razorjob", name, "-n", ns, "--wait=true")
        else:
            self.kubectl("delete", "-n", ns, "-f", str(path), "--wait=true")
        _wait(lambda: not self.api.pods(ns, selector), 120, f"the pods of {name} to be gone")
        _wait(lambda: self.api.get(f"/api/v1/namespaces/{ns}/services/{name}") is None, 60,
              f"the Service {name} to be gone")
        launch = Launch(side, step, apply_seconds, seen["created"] - t0, seen["running"] - t0,
                        seen["end"] - t0, busy, cpu, misses,
                        sum(pods_cpu.values()) if len(pods_cpu) == 2 else None,
                        op1 - op0 if op0 is not None and op1 is not None else None)
        self.record({"run": name, "t0": t0, **launch.__dict__})
        return launch

    def record(self, row: dict) -> None:
        """One run's raw numbers, a line of <tmp>/runs.jsonl (kept with --keep)."""
        with (self.tmp / "runs.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    # ---- (2) gang recovery
    def recover(self, name: str) -> Recovery:
        from node.test_razorjob import worker_pids

        ns = NS_RECOVERY
        results = self.results(name)
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(razor_job(name, results, self.r.recovery_epochs, self.r.teacher_epochs),
                                       sort_keys=False))
        busy = self.quiet(name)
        self.apply(path, ns)
        work = results / name
        _wait(lambda: any(work.glob("epoch_*.pth")), self.timeout, f"a student checkpoint of {name}", 0.05)
        ckpts = sorted(int(p.stem.split("_")[1]) for p in work.glob("epoch_*.pth") if p.stem.split("_")[1].isdigit())
        mains = {rank: node_main_pid(name, rank) for rank in (0, 1)}
        workers = worker_pids(name, 1)
        if not workers or None in mains.values():
            raise BenchError(f"{name}: rank 1's training process or a container's main process was not "
                             f"found (workers {workers}, main processes {mains}); did the job end before "
                             f"the kill? (--recovery-epochs)")
        t_kill = time.time()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        t: dict[str, float] = {}
        while not gone(mains[1]):
            if time.time() - t_kill > 60:
                raise BenchError(f"{name}: rank 1's container did not exit within 60s of the kill")
            time.sleep(PROC_POLL)
        t["exit"] = time.time()
        deadline = time.monotonic() + self.timeout
        last_api = 0.0
        status: dict = {}
        message = ""
        while "running" not in t:
            now = time.time()
            if "gang_down" not in t and gone(mains[0]):
                t["gang_down"] = now
            if now - last_api >= POLL:
                last_api = now
                status = (self.api.job(ns, name) or {}).get("status") or {}
                if status.get("phase") == "Failed":
                    raise BenchError(f"{name} failed: {status.get('message')}")
                if "restart" not in t and int(status.get("attempt") or 1) >= 2:
                    t["restart"] = now
                    message = status.get("message") or ""
                pods = self.api.pods(ns, f"razor.dev/job-name={name},razor.dev/attempt=2")
                if len(pods) == 2 and all(ph in ("Running", "Succeeded") for ph in _phases(pods)):
                    t.setdefault("restart", now)
                    t.setdefault("gang_down", now)
                    t["running"] = now
            if time.monotonic() > deadline:
                raise BenchError(f"{name}: attempt 2 not running after {self.timeout:g}s (status {status})")
            time.sleep(PROC_POLL if "gang_down" not in t else POLL / 4)
        final = _wait(lambda: (s := (self.api.job(ns, name) or {}).get("status") or {}).get("phase")
                      in ("Succeeded", "Failed") and s, self.timeout, f"{name} to finish")
        if final.get("phase") != "Succeeded" or final.get("attempt") != 2 or final.get("restarts") != 1:
            raise BenchError(f"{name}: expected Succeeded at attempt 2 after 1 restart, got {final}")
        step = self.first_step(name)
        if step <= t["exit"]:
            raise BenchError(f"{name}: the summary's first step ({step:.1f}) is not attempt 2's")
        t["step"] = step
        stages = {k: t[k] - t["exit"] for k, _ in STAGES}
        self.save_logs(ns, name)
        logs = self.c.kubectl("logs", "-n", ns, f"{name}-0", check=False).stdout
        if "resumed from" not in logs:
            raise BenchError(f"{name}: rank 0 of attempt 2 did not say it resumed:\n{logs[-2000:]}")
        self.kubectl("delete", "razorjob", name, "-n", ns, "--wait=true")
        _wait(lambda: not self.api.pods(ns, f"razor.dev/job-name={name}"), 120, f"the pods of {name} to be gone")
        rec = Recovery(step - t["exit"], t["exit"] - t_kill, stages, ckpts[-1] if ckpts else 0, message, busy)
        self.record({"run": name, "t_kill": t_kill, **{f"t_{k}": v for k, v in t.items()}, **rec.__dict__})
        return rec


def measure(repeat: int = 5, progress: Callable[[str], None] = print, *, warmup: int = 1,
            recovery_repeat: int = 3, epochs: int = EPOCHS, teacher_epochs: int = TEACHER_EPOCHS,
            recovery_epochs: int = RECOVERY_EPOCHS, build: bool = True, timeout: float = 300.0,
            quiet_timeout: float = QUIET_TIMEOUT, keep: Path | None = None, command: str = COMMAND) -> Result:
    """Build the images, start the cluster, install razor with helm, run (1) and (2), stop it all
    (on errors too)."""
    from helm.conftest import CHART, Helm, find_helm
    from images.conftest import OPERATOR_TAG, TRAINER_TAG
    from kube_node import Cluster

    check_no_other_cluster()
    check_same_arguments(epochs, teacher_epochs, TRAINER_TAG)
    result = Result(epochs, teacher_epochs, recovery_epochs, warmup, load_before=load(), command=command,
                    date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    operator, trainer = build_images(progress) if build else (OPERATOR_TAG, TRAINER_TAG)
    ids = []
    for image in (operator, trainer):
        out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise BenchError(f"podman has no image {image} (run without --no-build): {out.stderr.strip()}")
        ids.append(f"{image} ({out.stdout.strip()[:12]})")
    result.images = ", ".join(ids)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="razor-bench-node-", dir=keep)).resolve()
    os.chmod(tmp, 0o755)
    progress(f"k8s node: files in {tmp}")
    ok = False
    try:
        try:
            helm = Helm(find_helm(), tmp / "helm-home")
        except BaseException as exc:
            if type(exc).__module__.startswith("_pytest"):
                raise _pytest_failure(exc) from None
            raise
        from k8s.conftest import CRD_FILE

        with Cluster(crds=[CRD_FILE], images=[operator, trainer]) as c:
            result.cluster_start = c.startup_seconds
            api = Api(c.cp)
            try:
                result.k8s_version = (api.get("/version") or {}).get("gitVersion", "?")
                progress(f"k8s node: cluster {result.k8s_version} up in {c.startup_seconds:.0f}s "
                         f"({', '.join(f'{k} {v:.0f}s' for k, v in c.timings.items())})")
                repo, tag = operator.rsplit(":", 1)
                tic = time.monotonic()
                helm.run("install", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--create-namespace",
                         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
                         "--set", "image.pullPolicy=Never", "--set", f"defaults.cpuImage={trainer}",
                         "--wait", "--timeout", "180s", cluster=c.cp, timeout=240)
                result.helm_install = time.monotonic() - tic
                progress(f"k8s node: helm install razor --wait took {result.helm_install:.0f}s")
                bench = Bench(c, api, tmp, trainer, result, quiet_timeout, timeout, progress)
                for ns in (NS_RAZOR, NS_BASE, NS_RECOVERY):
                    bench.namespace(ns)
                for i in range(warmup):
                    bench.launch("razor", f"wr{i}")
                    bench.launch("baseline", f"wb{i}")
                    progress(f"k8s node: warm-up pair {i + 1}/{warmup} done")
                for i in range(repeat):
                    order = ("razor", "baseline") if i % 2 == 0 else ("baseline", "razor")
                    got = {side: bench.launch(side, f"{side[0]}{i}") for side in order}
                    ours, base = got["razor"], got["baseline"]
                    result.razor.append(ours)
                    result.baseline.append(base)
                    result.pairs.append((ours, base))
                    progress(f"k8s node {i + 1}/{repeat} ({order[0]} first): apply → first step razor "
                             f"{ours.first_step:.2f}s baseline {base.first_step:.2f}s "
                             f"({ours.first_step / base.first_step:.3f}x); both Running razor "
                             f"{ours.running:.2f}s baseline {base.running:.2f}s; end razor {ours.end:.2f}s "
                             f"baseline {base.end:.2f}s")
                for i in range(recovery_repeat):
                    rec = bench.recover(f"rec{i}")
                    result.recovery.append(rec)
                    progress(f"k8s node recovery {i + 1}/{recovery_repeat}: rank 1's container exit → "
                             f"first step of attempt 2 {rec.total:.2f}s ("
                             + ", ".join(f"{k} {v:.2f}s" for k, v in rec.stages.items()) + ")")
                ok = True
            except BaseException:
                log = c.kubectl("logs", "-n", SYSTEM_NS, "deployment/razor-operator", "--tail=30",
                                check=False).stdout
                progress(f"k8s node: the operator's last log lines:\n{log}")
                raise
            finally:
                api.close()
    finally:
        result.load_after = load()
        result.save(tmp / "result.json")
        if keep is None and ok:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not ok:
            progress(f"k8s node: the runs' files are kept in {tmp}")
    return result


# ------------------------------------------------------------------------------------ report


def table(r: Result) -> str:
    """Markdown: medians (min–max) in seconds, the ratio razor/baseline and the target; then the
    recovery."""
    rows = ["| measure | razor: RazorJob, operator | hand-written Service + 2 pods, torchrun "
            "| razor/baseline (pairs' min–max) | target | |",
            "|---|---|---|---|---|---|"]
    for label, attr, target in (("`kubectl apply` → first optimizer step (s)", "first_step", True),
                                ("`kubectl apply` command wall time (s)", "apply", False),
                                ("`kubectl apply` → both pods exist (s)", "created", False),
                                ("`kubectl apply` → both pods Running (s)", "running", False),
                                ("`kubectl apply` → both pods Succeeded (s)", "end", False)):
        pr = r.pair_ratios(attr)
        cell = f"{r.ratio(attr):.3f}x ({min(pr):.3f}–{max(pr):.3f})" if len(pr) > 1 else f"{r.ratio(attr):.3f}x"
        goal = f"| ≤ {TARGET:.2f}x | {verdict(r.met)} |" if target else "| | |"
        rows.append(f"| {label} | {spread([getattr(s, attr) for s in r.razor])} "
                    f"| {spread([getattr(s, attr) for s in r.baseline])} | {cell} {goal}")
    ours, base = min(s.first_step for s in r.razor), min(s.first_step for s in r.baseline)
    rows.append(f"| `kubectl apply` → first optimizer step, the fastest run of each side (s) | {ours:.2f} "
                f"| {base:.2f} | {ours / base:.3f}x | | |")
    rows.append(f"| CPU seconds the whole machine used, `kubectl apply` → both pods Succeeded "
                f"| {spread([s.cpu for s in r.razor], '{:.1f}')} | {spread([s.cpu for s in r.baseline], '{:.1f}')} "
                f"| {r.ratio('cpu'):.3f}x | | |")
    for label, attr in (("of which the job's two pods (their cgroups, sampled every 0.2 s)", "pods_cpu"),
                        ("of which razor-operator", "operator_cpu"),
                        ("of which the rest: the cluster's processes, the benchmark, other work", "rest_cpu")):
        ours = [getattr(s, attr) for s in r.razor if getattr(s, attr) is not None]
        base = [getattr(s, attr) for s in r.baseline if getattr(s, attr) is not None]
        if ours or base:
            rows.append(f"| {label} | {spread(ours, '{:.1f}') if ours else '—'} "
                        f"| {spread(base, '{:.1f}') if base else '—'} | | | |")
    rows.append(f"| machine's CPUs busy in the {QUIET_WINDOW:g} s before the apply (%) "
                f"| {spread([100 * s.busy_before for s in r.razor], '{:.0f}')} "
                f"| {spread([100 * s.busy_before for s in r.baseline], '{:.0f}')} | | | |")
    out = "\n".join(rows) + "\n"
    if r.recovery:
        n = len(r.recovery)
        rows = [f"| gang recovery, 2 nodes ({n} run{'s' if n > 1 else ''}) | seconds |", "|---|---|",
                f"| **rank 1's container exit → first optimizer step of attempt 2 (every rank training "
                f"again)** | **{spread([x.total for x in r.recovery])}** |",
                f"| SIGKILL of rank 1's training process → rank 1's container exit "
                f"| {spread([x.kill_to_exit for x in r.recovery])} |"]
        for key, label in STAGES[:-1]:  # the last one is the bold row
            rows.append(f"| rank 1's container exit → {label} | {spread([x.stages[key] for x in r.recovery])} |")
        out += "\n" + "\n".join(rows) + "\n"
    return out


def notes(r: Result) -> str:
    """What the numbers say, from the numbers."""
    d = r.med("razor", "first_step") - r.med("baseline", "first_step")
    ratios = r.pair_ratios()
    text = (f"{outcome(r.met)}: razor reaches the first optimizer step {d:+.2f} s after the hand-written "
            f"pods (medians of {len(r.pairs)} pairs in alternating order: {r.ratio():.3f}x; the pairs' "
            f"own ratios {min(ratios):.3f}x–{max(ratios):.3f}x"
            + ("; the target asks every pair's ratio to clear it" if not r.met else "") + ").")
    fast = min(s.first_step for s in r.razor) / min(s.first_step for s in r.baseline)
    text += (f" Other work on the machine only ever adds time, so the fastest run of each side is the "
             f"steadier comparison on a shared machine: {fast:.3f}x.")
    created = r.med("razor", "created") - r.med("baseline", "created")
    running = r.med("razor", "running") - r.med("baseline", "running")
    inside = ((r.med("razor", "first_step") - r.med("razor", "running"))
              - (r.med("baseline", "first_step") - r.med("baseline", "running")))
    text += (f" By stage, razor − baseline of the medians: both pods exist {created:+.2f} s (razor: the "
             f"operator sees the RazorJob, checks it and creates the Service and the pods; baseline: "
             f"`kubectl apply` creates them itself), both Running {running:+.2f} s, Running → first "
             f"step {inside:+.2f} s (in razor's containers `python -m razor.node` checks the contract and "
             f"waits until MASTER_ADDR resolves before the same torchrun; the baseline's rank 1 torchrun "
             f"starts at once and retries its connection to the master itself; runs whose pods' logs "
             f"show a failed lookup of MASTER_ADDR: razor {sum(x.dns_misses > 0 for x in r.razor)} of "
             f"{len(r.razor)}, baseline {sum(x.dns_misses > 0 for x in r.baseline)} of {len(r.baseline)}). "
             f"Most of the "
             f"{r.med('baseline', 'first_step'):.1f} s of the baseline is the same on both sides: "
             f"torchrun and the trainer importing torch in each pod, the rendezvous, the trainer's "
             f"start-up (data, models), on 2 shared cores.")
    if r.disturbed():
        quiet = r.quiet_pairs()
        text += (" The CPU seconds the machine spent outside the job's pods and the operator during a "
                 "run (the cluster's own processes and the benchmark: a few seconds when nothing else runs) show "
                 "other work on the machine in: " + "; ".join(r.disturbed()) + ".")
        if quiet:
            qr = [a.first_step / b.first_step for a, b in quiet]
            text += (f" In the {len(quiet)} pair(s) where neither run was disturbed, razor/baseline of the "
                     f"first step was {min(qr):.3f}x–{max(qr):.3f}x.")
        else:
            text += (" Every pair had a disturbed run: here the pairs' ratios measure the other work "
                     "more than razor, and the fastest run of each side is the better guide.")
    if r.recovery:
        tot = [x.total for x in r.recovery]
        st = {k: median([x.stages[k] for x in r.recovery]) for k, _ in STAGES}
        early = sum(x.stages["gang_down"] < x.stages["restart"] for x in r.recovery)
        launch_inside = median([x.first_step - x.running for x in r.razor])
        text += (f"\n\nGang recovery: {median(tot):.2f} s (median of {len(tot)}, "
                 f"{min(tot):.2f}–{max(tot):.2f}) from rank 1's container exit to every rank "
                 f"training again at attempt 2. Rank 1's container exited "
                 f"{median([x.kill_to_exit for x in r.recovery]):.2f} s after its training process was "
                 f"killed (torchrun notices its worker's death and exits, then razor.node). From that "
                 f"exit (medians): the operator's status said attempt 2 after {st['restart']:.2f} s (the "
                 f"kubelet reports the pod Failed, the operator marks the gang failed and deletes its "
                 f"pods); every container of attempt 1 had exited after {st['gang_down']:.2f} s"
                 + (f" (in {early} of {len(tot)} run(s) rank 0 had stopped on its own before that: its "
                    f"collective with the dead peer failed)" if early else "")
                 + f"; both pods of attempt 2 were Running after {st['running']:.2f} s (the operator "
                 f"creates them once every pod of attempt 1 is gone); the first optimizer step came after "
                 f"{st['step']:.2f} s, {st['step'] - st['running']:.2f} s after Running (torchrun and the "
                 f"trainer's start-up in each pod, the rendezvous, loading the teacher's and the student's "
                 f"last checkpoints; in the launches above razor took {launch_inside:.2f} s from both pods "
                 f"Running to the first step). The killed runs had student "
                 f"checkpoints up to epoch {', '.join(str(x.killed_at_epoch) for x in r.recovery)} "
                 f"of {r.recovery_epochs}; every one ended Succeeded at attempt 2 after 1 restart, and "
                 f"rank 0 of attempt 2 logged that it resumed. The status message at the restart: "
                 f"\"{r.recovery[-1].message}\".")
    if r.notes:
        text += "\n\nPossibly disturbed: " + "; ".join(r.notes) + "."
    return text + "\n"


def section(r: Result, command: str | None = None) -> str:
    """The markdown section of docs/benchmarks.md."""
    cmd = command or r.command
    n_rec = len(r.recovery)
    intro = (
        f"`benchmarks/k8s_node.py`: the one-node Kubernetes of `tests/kube_node.py` (kube-apiserver, "
        f"etcd, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, containerd, CNI bridge, "
        f"CoreDNS; the node in a network namespace of this host), razor installed by `helm install "
        f"razor charts/razor --wait` from the podman-built operator image, the CPU trainer image "
        f"imported into the node. The job: the README's 2-node CPU knowledge distillation (`{CONFIG}`, "
        f"1 process per node, gloo, `schedule.epochs={r.epochs}`, "
        f"`algorithm.teacher.epochs={r.teacher_epochs}`, `OMP_NUM_THREADS=1`), its work dir on a "
        f"hostPath volume owned by the images' user. razor: the RazorJob applied with `kubectl apply "
        f"-f`. Baseline, the strongest a user would write instead: one file with a headless Service "
        f"and two pods (`hostname`/`subdomain`, the same image with `imagePullPolicy: Never`, the same "
        f"volume, no ServiceAccount token, the launcher contract's variables typed by hand) that run "
        f"`torchrun` directly (not the image's entrypoint `python -m razor.node`) with exactly razor's "
        f"trainer arguments, applied with one `kubectl apply -f` too. Clock: from just before `kubectl "
        f"apply` is spawned to the trainer's `first_step_time` in `summary.json` (as "
        f"`launch_overhead.py`); the pods' states polled from the API server every {POLL:g} s. "
        f"{r.warmup} untimed warm-up pair(s), then {len(r.pairs)} pairs, alternating which side goes "
        f"first, the machine's CPUs quiet (under {QUIET_BUSY:.0%} busy over {QUIET_WINDOW:g} s) and the "
        f"previous run's objects gone before each run. Target: razor/baseline ≤ {TARGET:.2f}x, met only "
        f"when every pair's ratio clears it. Gang recovery ({n_rec} run(s), "
        f"`schedule.epochs={r.recovery_epochs}`): once the student has a checkpoint, rank 1's training "
        f"process is SIGKILLed (as `tests/node/test_razorjob.py` does); from rank 1's container exit "
        f"(its main process gone, checked every {PROC_POLL * 1000:g} ms) to the first optimizer step "
        f"of attempt 2.")
    measured = (
        f"Measured {r.date} with `{cmd}`; Kubernetes {r.k8s_version}, cluster started in "
        f"{r.cluster_start:.0f} s, `helm install --wait` {r.helm_install:.0f} s; images {r.images}; "
        f"load average (1, 5, 15 min) before: {r.load_before}, after: {r.load_after} (2 cores; the "
        f"cluster's own processes count too).")
    fill = lambda text: textwrap.fill(text, 100, break_on_hyphens=False, break_long_words=False)  # noqa: E731
    return f"""
### {TITLE}

{fill(intro)}

{fill(measured)}

{table(r)}
{notes(r)}"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--repeat", type=int, default=5, help="measured pairs of (1) (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs first (default 1)")
    p.add_argument("--recovery-repeat", type=int, default=3, help="runs of (2) (default 3; 0: none)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"student epochs of (1) (default {EPOCHS})")
    p.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS,
                   help=f"teacher epochs (default {TEACHER_EPOCHS})")
    p.add_argument("--recovery-epochs", type=int, default=RECOVERY_EPOCHS,
                   help=f"student epochs of (2) (default {RECOVERY_EPOCHS})")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions: --repeat 2 --recovery-repeat 1 (rough numbers)")
    p.add_argument("--no-build", action="store_true", help="use the podman images as they are")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per job before giving up")
    p.add_argument("--quiet-timeout", type=float, default=QUIET_TIMEOUT,
                   help=f"seconds to wait for quiet CPUs before each run (default {QUIET_TIMEOUT:g})")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep the runs' files in a new folder under DIR "
                   "(the pods' logs, runs.jsonl, result.json)")
    p.add_argument("--report", type=Path, metavar="RESULT_JSON",
                   help="measure nothing: print the report of a result.json a kept run left")
    args = p.parse_args()
    if args.report:
        print(section(Result.load(args.report)), end="")
        return 0
    if args.quick:
        args.repeat, args.recovery_repeat = 2, 1
    if min(args.repeat, args.epochs, args.teacher_epochs, args.recovery_epochs) < 1 or \
            min(args.warmup, args.recovery_repeat) < 0:
        p.error("--repeat and the epochs must be at least 1, --warmup and --recovery-repeat at least 0")
    if args.recovery_epochs < 3:
        p.error("--recovery-epochs must be at least 3 (rank 1 is killed after the first checkpoint)")
    # SIGTERM unwinds like Ctrl-C, so the cluster is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = measure(args.repeat, progress, warmup=args.warmup, recovery_repeat=args.recovery_repeat,
                     epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                     recovery_epochs=args.recovery_epochs, build=not args.no_build, timeout=args.timeout,
                     quiet_timeout=args.quiet_timeout, keep=args.keep,
                     command=" ".join([COMMAND, *map(shlex.quote, sys.argv[1:])]))
    print(section(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
