"""Operator fan-out and memory: razor-operator against a real kube-apiserver on loopback.

A control plane from tests/kube_cluster.py (etcd, kube-apiserver, kube-controller-manager; no
kubelet, no scheduler: pods are stored, never run) with crds/razorjob.yaml applied, and one
``python -m razor_operator --kubeconfig ... --namespace NS --liveness URL --metrics-port N``
process watching the benchmark's namespace NS (as tests/k8s/test_operator.py starts it, plus its
Prometheus metrics, for the count of reconciles). Measured:

1. fan-out of one big job: from the create call of one RazorJob (``--nodes`` 256, config
   ``c.yaml``) until all its pods exist, ``--repeat`` times (a fresh job name each time; the
   previous job is deleted and its pods are gone before the next);
2. many jobs at once: ``--jobs`` 200 RazorJobs of ``--job-nodes`` 4, the create calls issued
   concurrently from ``--threads`` 16 threads; from the first create call until all their pods
   exist;
3. operator memory: a second, fresh operator process in its own namespace; its VmRSS and VmHWM
   (/proc/PID/status) just after start with no jobs, and again once ``--memory-jobs`` 1,000
   suspended RazorJobs (nnodes 1, ``suspend: true``: the operator only sets their status, no pod
   or Service) all have the status phase Suspended and the operator is idle.

"Exist" is seen through a watch of the namespace's pods (label selector
``razor.dev/job-name``), opened before the first create call; the time is when the watch
delivers the last expected pod. The baseline of (1) and (2), in the same run and alternating
with the operator's runs: the benchmark itself creates the same number of pods, with the bodies
the operator would make (razor.kube.pod of the same RazorJob, owned by a RazorJob that exists),
straight to the API server with the kubernetes Python client from ``--threads`` threads, in a
second namespace that no operator watches, timed the same way. Operator minus baseline is what
the operator adds over the API server's own cost of storing the pods.

Between runs the operator is left to go idle (its CPU time, /proc/PID/stat, grows by under 3%
of a core for a second), so leftover work of one run does not slow the next. Also reported per
run: how long the operator stayed busy after the last pod existed, its CPU seconds, its
reconciles (``razor_reconcile_seconds_count``) and the API server's requests by verb and
resource (``apiserver_request_total`` of every client, watches left out).

    .venv/bin/python benchmarks/k8s_fanout.py [--repeat 3] [--nodes 256] [--jobs 200] ...
        [--job-nodes 4] [--memory-jobs 1000] [--threads 16] [--timeout 120] [--log-dir DIR]

Every wait is bounded; the operators and the control plane are stopped at the end, on errors
too. Numbers on a shared 2-core machine are noisy: the API server, etcd, the controller manager,
the operator and the benchmark all share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from common import PYTHON, ROOT, BenchError, free_port, median, spread, verdict, wait_for

if TYPE_CHECKING:  # the kubernetes client is imported when a measurement starts
    from kubernetes import client as k8s

sys.path.append(str(ROOT / "tests"))  # kube_cluster (standard library and PyYAML only)

GROUP, VERSION, PLURAL, KIND = "razor.dev", "v1alpha1", "razorjobs", "RazorJob"
LABEL_JOB = "razor.dev/job-name"
CRD = ROOT / "crds" / "razorjob.yaml"

TARGET_FANOUT = 3.0    # seconds, one job of 256 nodes, at most
TARGET_MANY = 10.0     # seconds, 200 jobs of 4 nodes, at most
TARGET_RSS_MB = 150.0  # MB (10^6 bytes), operator with 1,000 suspended jobs, at most
NODES, JOBS, JOB_NODES, MEMORY_JOBS, THREADS = 256, 200, 4, 1000, 16  # the defaults

MB = 1_000_000
REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds of every API call of the benchmark
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Run:
    seconds: float                 # first create call -> the watch has seen every pod
    first_pod: float               # first create call -> the watch saw the first pod
    creates_done: float            # first create call -> the last create call returned
    operator_cpu: float | None = None   # operator CPU seconds, create -> idle again
    settle: float | None = None    # every pod seen -> operator idle again (None: not in time)
    reconciles: int | None = None  # the operator's reconciles (razor_reconcile_seconds_count)
    requests: dict[str, int] = field(default_factory=dict)  # API server requests by "VERB resource"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


@dataclass
class Result:
    nodes: int
    jobs: int
    job_nodes: int
    memory_jobs: int
    threads: int
    k8s_version: str = ""
    control_plane_start: float = 0.0
    fanout: list[Run] = field(default_factory=list)
    fanout_bare: list[Run] = field(default_factory=list)
    many: list[Run] = field(default_factory=list)
    many_bare: list[Run] = field(default_factory=list)
    rss_start: float = 0.0         # MB, fresh operator, no jobs
    hwm_start: float = 0.0
    rss_jobs: float = 0.0          # MB, same operator, every suspended job Suspended, idle
    hwm_jobs: float = 0.0
    suspended_seconds: float = 0.0  # first create -> every job Suspended
    suspended_reconciles: int = 0    # the memory operator's reconciles, first create -> idle
    suspended_requests: dict[str, int] = field(default_factory=dict)
    fanout_operator_rss: float = 0.0  # MB, the fan-out operator at the end of (1) and (2)
    fanout_operator_hwm: float = 0.0
    log_notes: list[str] = field(default_factory=list)  # warnings/errors in the operator logs

    @staticmethod
    def med(runs: list[Run]) -> float:
        return median([r.seconds for r in runs])

    @property
    def fanout_ok(self) -> bool:
        return self.med(self.fanout) <= TARGET_FANOUT

    @property
    def many_ok(self) -> bool:
        return self.med(self.many) <= TARGET_MANY

    @property
    def memory_ok(self) -> bool:
        return max(self.rss_jobs, self.hwm_jobs) <= TARGET_RSS_MB


# ------------------------------------------------------------------------------------ helpers





def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the operator if the benchmark dies first (Linux), so none is left."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


def _kb_to_mb(value: str) -> float:
    number, unit = value.split()
    assert unit == "kB", value
    return int(number) * 1024 / MB


class Operator:
    """razor-operator as a process, as tests/k8s/test_operator.py starts it."""

    def __init__(self, cp, namespace: str, log_path: Path):
        self.cp, self.namespace, self.log_path = cp, namespace, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Operator":
        port = free_port()
        url = f"http://127.0.0.1:{port}/healthz"
        self.metrics_port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "razor_operator", "--kubeconfig", str(self.cp.kubeconfig),
                 "--namespace", self.namespace, "--liveness", url,
                 "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1"],
                cwd=self.log_path.parent, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.cp.env(), preexec_fn=_die_with_parent)

        def alive() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"razor-operator exited ({self.proc.returncode}) at start:\n"
                                 f"{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(alive, timeout, f"razor-operator's liveness probe {url}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"razor-operator is not running:\n{self.tail()}")

    def memory(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB."""
        self.check()
        st = proc_status(self.pid)
        return _kb_to_mb(st["VmRSS"]), _kb_to_mb(st["VmHWM"])

    def reconciles(self) -> int:
        """How many reconciles the operator has done (its Prometheus metrics)."""
        self.check()
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("razor_reconcile_seconds_count"):
                    return int(float(line.split()[-1]))
        raise BenchError(f"no razor_reconcile_seconds_count in {url}")

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) so far."""
        self.check()
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def wait_idle(self, timeout: float, window: float = 1.0, busy: float = 0.03,
                  step: float = 0.25) -> float | None:
        """Wait until the operator used under ``busy`` of a core over the last ``window`` seconds
        (sampled every ``step``); the monotonic time that quiet window began, or None if it was
        not idle within ``timeout``."""
        deadline = time.monotonic() + timeout
        samples = [(time.monotonic(), self.cpu())]
        while time.monotonic() < deadline:
            time.sleep(step)
            now, cpu = time.monotonic(), self.cpu()
            samples.append((now, cpu))
            while len(samples) > 1 and now - samples[1][0] >= window:
                samples.pop(0)  # keep the newest sample at least ``window`` old as the start
            t, c = samples[0]
            if now - t >= window and cpu - c <= busy * (now - t):
                return t
        return None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (kopf stops its watches), SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def api_requests(cp) -> dict[str, int]:
    """The API server's request counts so far by "VERB resource[/subresource]" (apiserver_request_total,
    every client; watches and discovery left out)."""
    status, text = cp.request("/metrics", timeout=30)
    if status != 200:
        raise BenchError(f"GET /metrics of the API server: HTTP {status}")
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in ("WATCH", "CONNECT") or not labels.get("resource"):
            continue
        key = f"{labels['verb']} {labels['resource']}" + (
            f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    d = {k: v - before.get(k, 0) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in d.items() if v > 0), key=lambda kv: -kv[1]))


def log_notes(paths: Iterable[Path], limit: int = 8) -> list[str]:
    """Warning/error lines and tracebacks of the operator logs (timestamps stripped, deduplicated)."""
    notes: dict[str, int] = {}
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback|Error:", line):
                key = re.sub(r"^\S+ \S+ ", "", line)[:300]
                notes[key] = notes.get(key, 0) + 1
    return [f"{n}x {line}" if n > 1 else line for line, n in list(notes.items())[:limit]] + (
        [f"... and {len(notes) - limit} more distinct lines"] if len(notes) > limit else [])


class PodWatch:
    """A watch of a namespace's pods (label selector); times when each expected pod first appears.

    Opened (list, then watch from the list's resourceVersion) before the create calls; read
    in a thread as raw JSON lines (no client models: cheap); closed on exit.
    """

    def __init__(self, core: "k8s.CoreV1Api", namespace: str, selector: str, expected: set[str],
                 timeout: float):
        self.core, self.namespace, self.selector = core, namespace, selector
        self.expected, self.timeout = set(expected), timeout
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._resp = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PodWatch":
        listing = json.loads(self.core.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT).data)
        if listing["items"]:
            names = [p["metadata"]["name"] for p in listing["items"]][:5]
            raise BenchError(f"pods left over in {self.namespace} ({self.selector}): {names} ...")
        self._resp = self.core.list_namespaced_pod(
            self.namespace, label_selector=self.selector, watch=True,
            resource_version=listing["metadata"]["resourceVersion"], allow_watch_bookmarks=False,
            timeout_seconds=int(self.timeout) + 30, _preload_content=False,
            _request_timeout=(10, self.timeout + 60))
        self._thread = threading.Thread(target=self._read, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            for line in iter_resp_lines(self._resp):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise BenchError(f"the pod watch failed: {event.get('object')}")
                name = event["object"]["metadata"]["name"]
                if event["type"] in ("ADDED", "MODIFIED") and name in self.expected \
                        and name not in self.seen:
                    self.seen[name] = time.monotonic()
                    if len(self.seen) == len(self.expected):
                        return
        except BaseException as exc:  # noqa: BLE001 (passed on to wait())
            if not self.done.is_set():
                self.error = exc
        finally:
            self.done.set()

    def wait(self) -> float:
        """The monotonic time the last expected pod appeared."""
        self.done.wait(self.timeout)
        if self.error is not None:
            raise BenchError(f"the pod watch failed: {self.error!r}")
        if len(self.seen) < len(self.expected):
            raise BenchError(f"only {len(self.seen)} of {len(self.expected)} pods in "
                             f"{self.namespace} ({self.selector}) after {self.timeout:g}s")
        return max(self.seen.values())

    def first(self) -> float:
        return min(self.seen.values())

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # noqa: BLE001 (closing a stream the reader already ended)
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------ the API


class Kube:
    """The benchmark's own client: jobs, pods, namespaces."""

    def __init__(self, cp, threads: int):
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = max(threads, 4) + 4
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.cp, self.threads = cp, threads
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-create")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.api.close()

    def namespace(self, name: str, timeout: float) -> str:
        """Create a namespace and wait for its default ServiceAccount (pod admission needs it)."""
        self.core.create_namespace({"metadata": {"name": name}}, _preload_content=False,
                                   _request_timeout=REQUEST_TIMEOUT)

        def ready() -> bool:
            try:
                self.core.read_namespaced_service_account("default", name, _preload_content=False,
                                                          _request_timeout=REQUEST_TIMEOUT)
                return True
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "status", None) == 404:
                    return False
                raise
        wait_for(ready, timeout, f"the default ServiceAccount of {name}", 0.05)
        return name

    @staticmethod
    def job_body(namespace: str, name: str, nnodes: int, suspend: bool = False) -> dict[str, Any]:
        spec: dict[str, Any] = {"config": "c.yaml", "nnodes": nnodes}
        if suspend:
            spec["suspend"] = True
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body,
            _request_timeout=REQUEST_TIMEOUT)

    def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        # as the operator does it (operator/handlers.py World.create_pod): raw, no client model
        self.core.create_namespaced_pod(namespace, body, _preload_content=False,
                                        _request_timeout=REQUEST_TIMEOUT)

    def concurrently(self, fn: Callable[[Any], Any], items: list[Any]) -> tuple[float, list[Any]]:
        """Call ``fn`` on every item from the thread pool; (monotonic time the last returned,
        results). Any failure is raised."""
        results = list(self.pool.map(fn, items))
        return time.monotonic(), results

    def delete_jobs(self, namespace: str) -> None:
        self.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, propagation_policy="Background",
            _request_timeout=REQUEST_TIMEOUT)

    def count_pods(self, namespace: str, selector: str, limit: int | None = None) -> int:
        kw = {"limit": limit} if limit else {}
        data = self.core.list_namespaced_pod(namespace, label_selector=selector,
                                             _preload_content=False,
                                             _request_timeout=REQUEST_TIMEOUT, **kw).data
        return len(json.loads(data)["items"])

    def wait_pods_gone(self, namespace: str, selector: str, timeout: float) -> None:
        wait_for(lambda: self.count_pods(namespace, selector, limit=1) == 0, timeout,
              f"the pods of {namespace} ({selector}) to be deleted (garbage collector)", 0.25)

    def pod_bodies(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The operator's pod bodies for a created RazorJob (operator/handlers.py reconcile)."""
        from razor import kube
        from razor.spec import parse_job

        ns, uid = job["metadata"]["namespace"], job["metadata"]["uid"]
        spec = parse_job({k: v for k, v in job.items() if k != "status"}, f"RazorJob {ns}")
        return [kube.pod(spec, r, ns, uid, 1, None) for r in range(spec.spec.nnodes)]


# ------------------------------------------------------------------------------------ runs


def _pod_names(names: list[str], nnodes: int) -> set[str]:
    return {f"{n}-{r}" for n in names for r in range(nnodes)}


def operator_run(kube: Kube, op: Operator, ns: str, names: list[str], nnodes: int,
                 selector: str, timeout: float) -> Run:
    """Create the RazorJobs ``names`` (concurrently when several) and time their pods."""
    bodies = [kube.job_body(ns, n, nnodes) for n in names]
    if op.wait_idle(timeout) is None:
        raise BenchError(f"razor-operator did not go idle in {timeout:g}s before a run")
    requests0, reconciles0 = api_requests(kube.cp), op.reconciles()
    cpu0 = op.cpu()
    with PodWatch(kube.core, ns, selector, _pod_names(names, nnodes), timeout) as watch:
        t0 = time.monotonic()
        if len(bodies) == 1:
            kube.create_job(bodies[0])
            created = time.monotonic()
        else:
            created, _ = kube.concurrently(kube.create_job, bodies)
        last = watch.wait()
        first = watch.first()
    quiet = op.wait_idle(timeout)
    cpu = op.cpu() - cpu0
    return Run(last - t0, first - t0, created - t0, cpu,
               None if quiet is None else max(0.0, quiet - last),
               op.reconciles() - reconciles0, _delta(api_requests(kube.cp), requests0))


def bare_run(kube: Kube, op: Operator, ns: str, names: list[str], nnodes: int, selector: str,
             timeout: float) -> Run:
    """Create the same pods straight to the API server, owned by RazorJobs made beforehand."""
    jobs = [kube.create_job(kube.job_body(ns, n, nnodes)) for n in names] if len(names) == 1 \
        else kube.concurrently(kube.create_job, [kube.job_body(ns, n, nnodes) for n in names])[1]
    bodies = [b for job in jobs for b in kube.pod_bodies(job)]
    if op.wait_idle(timeout) is None:  # the watched namespace's leftovers must not compete
        raise BenchError(f"razor-operator did not go idle in {timeout:g}s before a baseline run")
    requests0 = api_requests(kube.cp)
    with PodWatch(kube.core, ns, selector, _pod_names(names, nnodes), timeout) as watch:
        t0 = time.monotonic()
        created, _ = kube.concurrently(lambda b: kube.create_pod(ns, b), bodies)
        last = watch.wait()
        first = watch.first()
    return Run(last - t0, first - t0, created - t0, requests=_delta(api_requests(kube.cp), requests0))


def cleanup(kube: Kube, op: Operator, ns: str, selector: str, timeout: float) -> None:
    """Delete every RazorJob of ``ns``; wait until the garbage collector removed their pods."""
    kube.delete_jobs(ns)
    kube.wait_pods_gone(ns, selector, timeout)
    wait_for(lambda: not json.loads(kube.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, limit=1, _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT).data)["items"],
        timeout, f"the RazorJobs of {ns} to be deleted")
    op.wait_idle(timeout)


def _fmt(run: Run) -> str:
    extra = ""
    if run.operator_cpu is not None:
        settle = "not idle" if run.settle is None else f"idle {run.settle:.1f}s later"
        extra = f", operator CPU {run.operator_cpu:.1f}s, {settle}"
    return f"{run.seconds:.2f}s (first pod {run.first_pod:.2f}s, creates returned {run.creates_done:.2f}s{extra})"


def _fanout(cp, kube: Kube, op: Operator, result: Result, repeat: int, many_repeat: int,
            timeout: float, progress: Callable[[str], None]) -> None:
    """(1) and (2), each operator run followed by its baseline."""
    ns, bare = op.namespace, "bench-bare"
    kube.namespace(bare, timeout)
    sel = LABEL_JOB  # every pod of a namespace with the job label
    nodes, jobs, job_nodes = result.nodes, result.jobs, result.job_nodes
    for i in range(repeat):
        name = f"big-{i}"
        ours = operator_run(kube, op, ns, [name], nodes, f"{LABEL_JOB}={name}", timeout)
        result.fanout.append(ours)
        cleanup(kube, op, ns, sel, timeout)
        base = bare_run(kube, op, bare, [name], nodes, f"{LABEL_JOB}={name}", timeout)
        result.fanout_bare.append(base)
        cleanup(kube, op, bare, sel, timeout)
        progress(f"k8s fan-out {i + 1}/{repeat}: {nodes} pods, operator {_fmt(ours)}; "
                 f"bare {_fmt(base)}")
    for i in range(many_repeat):
        names = [f"m{i}-{j}" for j in range(jobs)]
        ours = operator_run(kube, op, ns, names, job_nodes, sel, timeout)
        result.many.append(ours)
        cleanup(kube, op, ns, sel, timeout)
        base = bare_run(kube, op, bare, names, job_nodes, sel, timeout)
        result.many_bare.append(base)
        cleanup(kube, op, bare, sel, timeout)
        progress(f"k8s many {i + 1}/{many_repeat}: {jobs}x{job_nodes} pods, operator "
                 f"{_fmt(ours)}; bare {_fmt(base)}")
    result.fanout_operator_rss, result.fanout_operator_hwm = op.memory()


def _memory(cp, kube: Kube, op: Operator, result: Result, timeout: float,
            progress: Callable[[str], None]) -> None:
    """(3): a fresh operator's memory before and with the suspended jobs."""
    ns, n = op.namespace, result.memory_jobs
    if op.wait_idle(timeout) is None:
        raise BenchError(f"the fresh razor-operator did not go idle in {timeout:g}s")
    result.rss_start, result.hwm_start = op.memory()
    bodies = [kube.job_body(ns, f"s-{j}", 1, suspend=True) for j in range(n)]
    requests0, reconciles0 = api_requests(cp), op.reconciles()
    t0 = time.monotonic()
    kube.concurrently(kube.create_job, bodies)

    def all_suspended() -> bool:
        op.check()
        items = json.loads(kube.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT).data)["items"]
        return sum((j.get("status") or {}).get("phase") == "Suspended" for j in items) == n
    wait_for(all_suspended, max(timeout, n * 0.3), f"{n} RazorJobs to be Suspended", 1.0)
    result.suspended_seconds = time.monotonic() - t0
    if op.wait_idle(timeout) is None:
        progress("k8s: the memory operator was still busy; its memory read anyway")
    result.rss_jobs, result.hwm_jobs = op.memory()
    result.suspended_reconciles = op.reconciles() - reconciles0
    result.suspended_requests = _delta(api_requests(cp), requests0)
    pods = kube.count_pods(ns, LABEL_JOB)
    if pods:
        raise BenchError(f"{pods} pod(s) exist for suspended RazorJobs in {ns}")
    progress(f"k8s memory: RSS {result.rss_start:.0f} MB after start, {result.rss_jobs:.0f} MB "
             f"with {n} suspended jobs (peak {result.hwm_jobs:.0f} MB); all Suspended "
             f"{result.suspended_seconds:.1f}s after the first create")


def measure(repeat: int = 3, nodes: int = NODES, jobs: int = JOBS, job_nodes: int = JOB_NODES,
            many_repeat: int = 1, memory_jobs: int = MEMORY_JOBS, threads: int = THREADS,
            timeout: float = 120.0, log_dir: Path | None = None,
            progress: Callable[[str], None] = print) -> Result:
    """Start a control plane, run (1), (2) and (3), stop everything (on errors too)."""
    from kube_cluster import ControlPlane

    result = Result(nodes, jobs, job_nodes, memory_jobs, threads)
    tmp = Path(tempfile.mkdtemp(prefix="razor-bench-k8s-"))
    operators: list[Operator] = []
    failed = True
    try:
        with ControlPlane(crds=[CRD], start_timeout=max(60.0, timeout)) as cp:
            result.control_plane_start = cp.startup_seconds
            result.k8s_version = json.loads(cp.request("/version")[1]).get("gitVersion", "?")
            progress(f"k8s: control plane {result.k8s_version} started in {cp.startup_seconds:.1f}s")
            kube = Kube(cp, threads)
            try:  # the operators stop before the control plane does
                op = Operator(cp, kube.namespace("bench-fanout", timeout), tmp / "operator-fanout.log")
                operators.append(op)
                op.start(timeout)
                _fanout(cp, kube, op, result, repeat, many_repeat, timeout, progress)
                op.stop()
                mop = Operator(cp, kube.namespace("bench-memory", timeout), tmp / "operator-memory.log")
                operators.append(mop)
                mop.start(timeout)
                _memory(cp, kube, mop, result, timeout, progress)
                mop.stop()
            except BaseException:
                for op in operators:
                    progress(f"k8s: last lines of {op.log_path.name}:\n{op.tail()}")
                raise
            finally:
                for op in operators:
                    op.stop()
                kube.close()
        failed = False
    finally:
        result.log_notes = log_notes(op.log_path for op in operators)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            for op in operators:
                shutil.copy(op.log_path, log_dir / op.log_path.name)
            progress(f"k8s: operator logs in {log_dir}")
        if failed and operators:
            progress(f"k8s: operator logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------ report


def _stat(runs: list[Run], attr: str, fmt: str = "{:.1f}") -> str:
    values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
    if not values:
        return "—"
    return fmt.format(values[0]) if len(set(values)) == 1 else spread(values, fmt)


def _settle(runs: list[Run]) -> str:
    late = sum(r.settle is None for r in runs)
    return _stat(runs, "settle") + (f"; {late} run(s) not idle within the timeout" if late else "")


def table(r: Result) -> str:
    """Markdown: fan-out against the bare baseline with the targets, then memory."""
    big, many = f"one {r.nodes}-node job", f"{r.jobs} jobs x {r.job_nodes} nodes"
    n_big, n_many = r.nodes, r.jobs * r.job_nodes

    def ratio(ours: list[Run], bare: list[Run]) -> str:
        return f"{r.med(ours) / r.med(bare):.2f}x"

    s = lambda runs, attr="seconds": _stat(runs, attr, "{:.2f}")  # noqa: E731
    n = lambda runs, attr: _stat(runs, attr, "{:,.0f}")  # noqa: E731
    rows = [
        f"| measure | razor-operator | bare pod creates ({r.threads} threads) | operator/bare "
        "| target | |",
        "|---|---|---|---|---|---|",
    ]
    for label, count, ours, bare, target, ok, first in (
            (big, n_big, r.fanout, r.fanout_bare, TARGET_FANOUT, r.fanout_ok, "create call"),
            (many, n_many, r.many, r.many_bare, TARGET_MANY, r.many_ok, "first create call")):
        rows += [
            f"| {label}: {first} → all {count} pods exist (s) | {s(ours)} | {s(bare)} "
            f"| {ratio(ours, bare)} | ≤ {target:g} s | {verdict(ok)} |",
            f"| {label}: {first} → first pod (s) | {s(ours, 'first_pod')} | {s(bare, 'first_pod')} "
            "| | | |",
            f"| {label}: {first} → last create call returned (s) | {s(ours, 'creates_done')} "
            f"| {s(bare, 'creates_done')} | | | |",
            f"| {label}: all pods exist → operator idle again (s) | {_settle(ours)} | | | | |",
            f"| {label}: operator CPU time, {first} → idle (s) | {_stat(ours, 'operator_cpu')} "
            "| | | | |",
            f"| {label}: operator reconciles, {first} → idle | {n(ours, 'reconciles')} | | | | |",
            f"| {label}: API requests (all clients, no watches) | {n(ours, 'total_requests')} "
            f"| {n(bare, 'total_requests')} | | | |",
        ]
    rows += [
        "",
        f"| razor-operator memory (MB = 10^6 bytes) | just after start, no jobs "
        f"| {r.memory_jobs:,} suspended RazorJobs | target | |",
        "|---|---|---|---|---|",
        f"| resident (VmRSS) | {r.rss_start:.1f} | {r.rss_jobs:.1f} | ≤ {TARGET_RSS_MB:g} MB "
        f"| {verdict(r.rss_jobs <= TARGET_RSS_MB)} |",
        f"| peak resident (VmHWM) | {r.hwm_start:.1f} | {r.hwm_jobs:.1f} | ≤ {TARGET_RSS_MB:g} MB "
        f"| {verdict(r.hwm_jobs <= TARGET_RSS_MB)} |",
        f"| first create call → every job's status Suspended (s) | | {r.suspended_seconds:.1f} | | |",
        f"| operator reconciles, first create → idle | | {r.suspended_reconciles:,} | | |",
        f"| API requests (all clients, no watches) | | {sum(r.suspended_requests.values()):,} | | |",
    ]
    return "\n".join(rows) + "\n"


def _breakdown(requests: dict[str, int], top: int = 8) -> str:
    items = list(requests.items())
    text = ", ".join(f"{k} {v:,}" for k, v in items[:top])
    return text + (f", {sum(v for _, v in items[top:]):,} other" if len(items) > top else "")


def notes(r: Result) -> str:
    """Plain-text facts next to the table: the set-up, the API requests, the operator logs."""
    lines = [
        f"Control plane: Kubernetes {r.k8s_version} (etcd, kube-apiserver, kube-controller-manager "
        f"from tests/kube_cluster.py, started in {r.control_plane_start:.1f} s); no kubelet, so "
        "pods are only stored. The fan-out operator's memory after runs (1) and (2): RSS "
        f"{r.fanout_operator_rss:.1f} MB, peak {r.fanout_operator_hwm:.1f} MB.",
        "API requests of the last run of each kind, by verb and resource (every client, the "
        "benchmark's own create calls and one LIST included):\n",
    ]
    for label, run in ((f"one {r.nodes}-node job, operator", r.fanout[-1] if r.fanout else None),
                       (f"one {r.nodes}-node job, bare", r.fanout_bare[-1] if r.fanout_bare else None),
                       (f"{r.jobs} x {r.job_nodes}, operator", r.many[-1] if r.many else None),
                       (f"{r.jobs} x {r.job_nodes}, bare", r.many_bare[-1] if r.many_bare else None)):
        if run is not None:
            lines[-1] += f"\n- {label}: {_breakdown(run.requests)}"
    if r.suspended_requests:
        lines[-1] += (f"\n- {r.memory_jobs:,} suspended jobs, operator: "
                      f"{_breakdown(r.suspended_requests)}")
    if r.log_notes:
        lines.append("The operator logs had warnings or errors:\n\n" + "\n".join(
            f"    {n}" for n in r.log_notes))
    else:
        lines.append("The operator logs had no warnings or errors.")
    return "\n\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs of the one-big-job fan-out (default 3)")
    p.add_argument("--nodes", type=int, default=NODES, help=f"nnodes of the big job (default {NODES})")
    p.add_argument("--jobs", type=int, default=JOBS, help=f"jobs created at once (default {JOBS})")
    p.add_argument("--job-nodes", type=int, default=JOB_NODES,
                   help=f"nnodes of each of those (default {JOB_NODES})")
    p.add_argument("--many-repeat", type=int, default=1, help="runs of the many-jobs case (default 1)")
    p.add_argument("--memory-jobs", type=int, default=MEMORY_JOBS,
                   help=f"suspended jobs for the memory measure (default {MEMORY_JOBS})")
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"threads issuing create calls (default {THREADS})")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for each wait (default 120)")
    p.add_argument("--log-dir", type=Path, help="keep the operators' logs in this folder")
    args = p.parse_args()
    if min(args.repeat, args.nodes, args.jobs, args.job_nodes, args.many_repeat, args.memory_jobs,
           args.threads) < 1:
        p.error("every count must be at least 1")
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = measure(args.repeat, args.nodes, args.jobs, args.job_nodes, args.many_repeat,
                     args.memory_jobs, args.threads, args.timeout, args.log_dir, progress)
    print(table(result))
    print(notes(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
