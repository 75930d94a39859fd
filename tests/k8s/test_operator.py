"""The operator against a real kube-apiserver: tests set pod status as a kubelet would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conftest import eventually

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "razor.dev", "v1alpha1", "razorjobs"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Operator:
    """razor-operator as a process, the way a Deployment would run it."""

    def __init__(self, cluster, namespace: str, log_path, args: tuple[str, ...] = ()):
        self.cluster, self.namespace, self.log_path, self.args = cluster, namespace, log_path, args
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Operator":
        port = _free_port()
        self.metrics_port = _free_port()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "razor_operator", "--kubeconfig", str(self.cluster.kubeconfig),
             "--namespace", self.namespace, "--liveness", f"http://127.0.0.1:{port}/healthz",
             "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"operator not alive in 60s: {self.log_path.read_text()}")

    def env(self) -> dict[str, str]:
        """No KUBECONFIG and a HOME without ~/.kube: only --kubeconfig may lead to the cluster."""
        env = {k: v for k, v in self.cluster.env().items() if k != "KUBECONFIG"}
        env["HOME"] = str(self.log_path.parent)
        return env

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def api(cluster):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    api_client = client.ApiClient(cfg)
    yield client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    api_client.close()


@pytest.fixture
def operator(cluster, namespace, tmp_path):
    op = Operator(cluster, namespace, tmp_path / "operator.log").start()
    yield op
    op.kill(signal.SIGTERM)


def create_job(api, namespace: str, name: str, **spec: Any) -> dict:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RazorJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": "trainer/configs/digits_kd.yaml", **spec}}
    return api[1].create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_job(api, namespace: str, name: str) -> dict:
    return api[1].get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def pods_of(api, namespace: str, name: str) -> list:
    return sorted(api[0].list_namespaced_pod(namespace, label_selector=f"razor.dev/job-name={name}").items,
                  key=lambda p: p.metadata.name)


def phase_is(api, ns, name, phase):
    return lambda: (get_job(api, ns, name).get("status") or {}).get("phase") == phase


def kubelet(api, namespace: str, pod: str, phase: str, exit_code: int | None = None, reason: str | None = None,
            finished_at: datetime | None = None, conditions: list[dict] | None = None):
    """Set a pod's status as a kubelet would."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    finished = (finished_at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if phase == "Running":
        state = {"running": {"startedAt": now}}
    elif phase in ("Failed", "Succeeded"):
        state = {"terminated": {"exitCode": exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1),
                                "reason": reason or ("Completed" if phase == "Succeeded" else "Error"),
                                "startedAt": now, "finishedAt": finished}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status = {"phase": phase, "containerStatuses": [{
        "name": "trainer", "ready": phase == "Running", "restartCount": 0, "image": "razor-trainer",
        "imageID": "", "state": state}]}
    if conditions:
        status["conditions"] = conditions
    api[0].patch_namespaced_pod_status(pod, namespace, {"status": status})


def all_pods(api, ns, name, n, attempt=None):
    def check():
        pods = pods_of(api, ns, name)
        if attempt is not None:
            pods = [p for p in pods if p.metadata.labels["razor.dev/attempt"] == str(attempt)
                    and not p.metadata.deletion_timestamp]
        return pods if len(pods) == n else None
    return check


def run_all(api, ns, name, n, attempt=1):
    pods = eventually(all_pods(api, ns, name, n, attempt), what=f"{n} pods of attempt {attempt}")
    for pod in pods:
        kubelet(api, ns, pod.metadata.name, "Running")
    eventually(phase_is(api, ns, name, "Running"), what="phase Running")
    return pods


def test_four_node_job_gets_a_headless_service_and_four_pods_with_the_contract(api, namespace, operator):
    create_job(api, namespace, "kd", nnodes=4, gpusPerNode=2, image="razor-trainer:test",
               resources={"requests": {"cpu": "2"}, "shmSize": "2Gi"}, podSecurityContext={"fsGroup": 65532})
    pods = eventually(all_pods(api, namespace, "kd", 4), what="4 pods")
    svc = api[0].read_namespaced_service("kd", namespace)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses is True
    for rank, pod in enumerate(pods):
        assert pod.metadata.name == f"kd-{rank}"
        assert (pod.spec.hostname, pod.spec.subdomain, pod.spec.restart_policy) == (f"kd-{rank}", "kd", "Never")
        c = pod.spec.containers[0]
        env = {e.name: e.value for e in c.env}
        assert env["MASTER_ADDR"] == f"kd-0.kd.{namespace}.svc" and env["MASTER_PORT"] == "29500"
        assert (env["NNODES"], env["NODE_RANK"], env["NPROC_PER_NODE"], env["GPUS_PER_NODE"]) == \
            ("4", str(rank), "2", "2")
        assert env["PET_NODE_RANK"] == str(rank) and env["RAZOR_ATTEMPT"] == "1"
        assert env["RAZOR_JOB_NAME"] == "kd"
        assert c.resources.limits == {"nvidia.com/gpu": "2"}
        assert c.resources.requests == {"cpu": "2", "nvidia.com/gpu": "2"}  # the API server copies the limit
        shm = next(v for v in pod.spec.volumes if v.name == "dshm")
        assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "2Gi"
        assert pod.metadata.owner_references[0].kind == "RazorJob"
        assert pod.spec.security_context.fs_group == 65532
    # The operator creates the pods, then patches the status, then counts the reconcile.
    eventually(lambda: any(c["type"] == "Created" and c["status"] == "True"
                           for c in (get_job(api, namespace, "kd").get("status") or {}).get("conditions", [])),
               what="the Created condition")

    def metrics() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return text if 'razor_jobs{phase="Pending"} 1.0' in text else None
    text = eventually(metrics, what="the job counted in razor_jobs")
    assert "razor_pods_created_total 4.0" in text and "razor_reconcile_seconds_count" in text


def test_a_failed_rank_restarts_the_gang_until_the_backoff_limit(api, namespace, operator):
    create_job(api, namespace, "gang", nnodes=4, backoffLimit=1, restartBackoffSeconds=1)
    run_all(api, namespace, "gang", 4)
    kubelet(api, namespace, "gang-2", "Failed", 137, "OOMKilled")
    eventually(lambda: (get_job(api, namespace, "gang")["status"].get("attempt") == 2), what="attempt 2")
    seen_restarting = get_job(api, namespace, "gang")["status"]
    assert seen_restarting["restarts"] == 1 and seen_restarting["countedRestarts"] == 1
    pods = run_all(api, namespace, "gang", 4, attempt=2)
    assert all({e.name: e.value for e in p.spec.containers[0].env}["RAZOR_ATTEMPT"] == "2" for p in pods)
    st = get_job(api, namespace, "gang")["status"]
    restarting = next(c for c in st["conditions"] if c["type"] == "Restarting")
    assert restarting["status"] == "False" and st["phase"] == "Running" and st["restarts"] == 1
    events = api[0].list_namespaced_event(namespace, field_selector="involvedObject.name=gang").items
    assert any(e.reason == "Restarting" and e.type == "Warning" and
               "rank 2 (pod gang-2) exited with code 137 (OOMKilled)" in e.message for e in events)
    kubelet(api, namespace, "gang-2", "Failed", 137, "OOMKilled")
    eventually(phase_is(api, namespace, "gang", "Failed"), what="phase Failed")
    st = get_job(api, namespace, "gang")["status"]
    assert st["message"] == ("rank 2 (pod gang-2) exited with code 137 (OOMKilled); "
                             "backoffLimit 1 reached after 1 restart(s)")
    assert st["completionTime"]
    # Events are posted beside the status patch, not with it: give them a moment.
    eventually(lambda: {"Created", "Running", "Restarting", "BackoffLimitExceeded"} <= {
        e.reason for e in api[0].list_namespaced_event(namespace, field_selector="involvedObject.name=gang").items},
        what="the job's events")


def test_a_permanent_exit_code_fails_at_once(api, namespace, operator):
    create_job(api, namespace, "perm", nnodes=2, backoffLimit=5)
    run_all(api, namespace, "perm", 2)
    kubelet(api, namespace, "perm-1", "Failed", 2, "Error")
    eventually(phase_is(api, namespace, "perm", "Failed"), what="phase Failed")
    st = get_job(api, namespace, "perm")["status"]
    assert st["restarts"] == 0 and "exit code 2 is permanent" in st["message"]


def test_failures_are_classified_by_time_and_a_permanent_code_on_any_rank_wins(api, cluster, namespace, tmp_path):
    """Two jobs whose ranks failed while no operator ran, so that it sees every failure at once (as
    it does when the events of a big gang collapse into one reconcile): in one, rank 0 exited 1
    after rank 2 was OOM-killed; in the other, rank 0 exited 1 before rank 3's bad config (exit 2)."""
    op = Operator(cluster, namespace, tmp_path / "op1.log").start()
    create_job(api, namespace, "first", nnodes=4)
    create_job(api, namespace, "perm3", nnodes=4, backoffLimit=5)
    run_all(api, namespace, "first", 4)
    run_all(api, namespace, "perm3", 4)
    op.kill(signal.SIGTERM)
    t0 = datetime.now(timezone.utc)
    kubelet(api, namespace, "first-2", "Failed", 137, "OOMKilled", finished_at=t0 - timedelta(seconds=5))
    kubelet(api, namespace, "first-0", "Failed", 1, "Error", finished_at=t0)
    kubelet(api, namespace, "perm3-0", "Failed", 1, "Error", finished_at=t0 - timedelta(seconds=5))
    kubelet(api, namespace, "perm3-3", "Failed", 2, "Error", finished_at=t0)
    op2 = Operator(cluster, namespace, tmp_path / "op2.log").start()
    try:
        st = eventually(lambda: (s := get_job(api, namespace, "first")["status"]).get("attempt") == 2 and s,
                        what="attempt 2 of first")
        assert st["message"].startswith("rank 2 (pod first-2) exited with code 137 (OOMKilled); restarting"), st
        assert [(e["rank"], e["exitCode"]) for e in st["failedRanks"]] == [(2, 137), (0, 1)]
        eventually(phase_is(api, namespace, "perm3", "Failed"), what="perm3 Failed")
        st = get_job(api, namespace, "perm3")["status"]
        assert st["message"] == ("rank 3 (pod perm3-3) exited with code 2 (Error); exit code 2 is permanent, "
                                 "not restarted")
        assert st["restarts"] == 0
        assert next(c for c in st["conditions"] if c["type"] == "Failed")["reason"] == "PermanentFailure"
    finally:
        op2.kill(signal.SIGTERM)


def test_a_preempted_rank_restarts_the_gang_without_using_the_restart_budget(api, namespace, operator):
    """backoffLimit 0, and yet: the scheduler preempts rank 1 (DisruptionTarget), razor.node stops it
    with 75 after saving a checkpoint; then rank 0 of the next attempt exits 75 on a SIGTERM."""
    create_job(api, namespace, "spot", nnodes=2, backoffLimit=0)
    run_all(api, namespace, "spot", 2)
    kubelet(api, namespace, "spot-1", "Failed", 75, "Error", conditions=[{
        "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
        "message": "Preempted in order to admit critical pod"}])
    st = eventually(lambda: (s := get_job(api, namespace, "spot")["status"]).get("attempt") == 2 and s,
                    what="attempt 2")
    assert (st["restarts"], st["countedRestarts"], st["disruptionRestarts"]) == (1, 0, 1)
    assert "nextAttemptTime" not in st, "a disruption restarts at once"
    restarting = next(c for c in st["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "Preempted"
    assert st["message"] == ("rank 1 (pod spot-1) exited with code 75 (Error): preempted by the scheduler for a "
                             "pod of higher priority; restarting all 2 rank(s) as attempt 2 (a disruption: not "
                             "counted against backoffLimit)")
    run_all(api, namespace, "spot", 2, attempt=2)
    kubelet(api, namespace, "spot-0", "Failed", 75, "Error")
    st = eventually(lambda: (s := get_job(api, namespace, "spot")["status"]).get("attempt") == 3 and s,
                    what="attempt 3")
    assert (st["phase"], st["restarts"], st["countedRestarts"]) == ("Restarting", 2, 0)
    run_all(api, namespace, "spot", 2, attempt=3)
    kubelet(api, namespace, "spot-1", "Failed", 1, "Error")  # a real failure: the budget is 0
    eventually(phase_is(api, namespace, "spot", "Failed"), what="phase Failed")
    st = get_job(api, namespace, "spot")["status"]
    assert st["message"] == ("rank 1 (pod spot-1) exited with code 1 (Error); backoffLimit 0 reached after "
                             "0 restart(s) (2 more not counted)")


def test_counted_restarts_wait_for_the_backoff_which_doubles(api, namespace, operator):
    """The operator's own clock starts the next attempt at status.nextAttemptTime, not before."""
    create_job(api, namespace, "loop", nnodes=2, backoffLimit=3, restartBackoffSeconds=3, retryableExitCodes=[124])
    run_all(api, namespace, "loop", 2)
    for attempt, wait in ((1, 3), (2, 6), (3, 12)):
        code = 124 if attempt == 2 else 1  # retryable: not counted, but backed off too
        kubelet(api, namespace, "loop-1", "Failed", code, "Error")
        st = eventually(lambda: (s := get_job(api, namespace, "loop")["status"]).get("attempt") == attempt + 1
                        and s, what=f"attempt {attempt + 1}")
        assert f"as attempt {attempt + 1} in {wait}s" in st["message"], st["message"]
        due = datetime.strptime(st["nextAttemptTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        pods = eventually(all_pods(api, namespace, "loop", 2, attempt + 1), timeout=wait + 30,
                          what=f"attempt {attempt + 1}'s pods")
        assert all(p.metadata.creation_timestamp >= due for p in pods), (due, [p.metadata.creation_timestamp
                                                                              for p in pods])
        run_all(api, namespace, "loop", 2, attempt=attempt + 1)
    st = get_job(api, namespace, "loop")["status"]
    assert (st["restarts"], st["countedRestarts"], st["disruptionRestarts"]) == (3, 2, 0)
    assert "nextAttemptTime" not in st


def test_a_big_jobs_status_counts_its_ranks_and_names_a_few(api, cluster, namespace, operator):
    """40 ranks: status.ranks names 32 of them; a pod that vanishes from the running gang (one the
    status does not name) is still a gang failure, seen from the expected ranks 0..nnodes-1."""
    create_job(api, namespace, "wide", nnodes=40)
    run_all(api, namespace, "wide", 40)
    st = get_job(api, namespace, "wide")["status"]
    assert st["ranksByPhase"] == {"pending": 0, "running": 40, "succeeded": 0, "failed": 0}
    assert [e["rank"] for e in st["ranks"]] == list(range(32))
    table = cluster.kubectl("get", "rj", "wide", "-n", namespace).stdout.splitlines()
    # PROGRESS is empty: no rank reported.
    assert table[0].split()[:8] == ["NAME", "PHASE", "PROGRESS", "NODES", "GPUS", "RUNNING", "RESTARTS", "COUNTED"]
    assert table[1].split()[:7] == ["wide", "Running", "40", "0", "40", "0", "0"]
    api[0].delete_namespaced_pod("wide-37", namespace, grace_period_seconds=0)
    st = eventually(lambda: (s := get_job(api, namespace, "wide")["status"]).get("attempt") == 2 and s,
                    what="attempt 2")
    assert st["message"].startswith("rank 37 (pod wide-37) lost: gone while the gang ran"), st["message"]
    assert next(c for c in st["conditions"] if c["type"] == "Restarting")["reason"] == "PodLost"
    assert st["failedRanks"][0]["rank"] == 37 and st["failedRanks"][0]["class"] == "Disruption"


def test_all_ranks_succeeded(api, namespace, operator):
    create_job(api, namespace, "ok", nnodes=2)
    run_all(api, namespace, "ok", 2)
    for rank in range(2):
        kubelet(api, namespace, f"ok-{rank}", "Succeeded", 0)
    eventually(phase_is(api, namespace, "ok", "Succeeded"), what="phase Succeeded")
    st = get_job(api, namespace, "ok")["status"]
    assert st["completionTime"] and st["startTime"]


def test_two_host_network_jobs_get_different_ports(api, namespace, operator):
    create_job(api, namespace, "hn-a", nnodes=2, hostNetwork=True)
    create_job(api, namespace, "hn-b", nnodes=2, hostNetwork=True)
    ports = []
    for name in ("hn-a", "hn-b"):
        pods = eventually(all_pods(api, namespace, name, 2), what=f"pods of {name}")
        env = {e.name: e.value for e in pods[0].spec.containers[0].env}
        assert pods[0].spec.host_network is True and pods[0].spec.dns_policy == "ClusterFirstWithHostNet"
        ports.append(int(env["MASTER_PORT"]))
        assert get_job(api, namespace, name)["status"]["port"] == ports[-1]
    assert ports[0] != ports[1]


def test_operator_killed_while_creating_32_pods_never_duplicates(api, cluster, namespace, tmp_path):
    op = Operator(cluster, namespace, tmp_path / "op1.log").start()
    create_job(api, namespace, "big", nnodes=32)
    eventually(lambda: len(pods_of(api, namespace, "big")) > 0, what="the first pod")
    op.kill(signal.SIGKILL)
    op2 = Operator(cluster, namespace, tmp_path / "op2.log").start()
    try:
        eventually(all_pods(api, namespace, "big", 32), what="32 pods")
        time.sleep(2)  # any duplicate would show up now
        names = [p.metadata.name for p in pods_of(api, namespace, "big")]
        assert names == sorted(f"big-{r}" for r in range(32)) and len(set(names)) == 32
    finally:
        op2.kill(signal.SIGTERM)


def test_suspend_resume_ttl_and_delete_leave_no_pod_behind(api, namespace, operator):
    create_job(api, namespace, "sus", nnodes=2, ttlSecondsAfterFinished=1)
    run_all(api, namespace, "sus", 2)
    api[1].patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sus", {"spec": {"suspend": True}})
    eventually(phase_is(api, namespace, "sus", "Suspended"), what="phase Suspended")
    eventually(lambda: pods_of(api, namespace, "sus") == [], what="no pods while suspended")
    api[1].patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sus", {"spec": {"suspend": False}})
    run_all(api, namespace, "sus", 2)
    for rank in range(2):
        kubelet(api, namespace, f"sus-{rank}", "Succeeded", 0)

    def gone():
        try:
            get_job(api, namespace, "sus")
            return False
        except Exception as exc:  # 404 once the TTL deleted it
            return getattr(exc, "status", None) == 404
    eventually(gone, timeout=60, what="the TTL to delete the job")
    eventually(lambda: pods_of(api, namespace, "sus") == [], timeout=60, what="garbage collection of pods")

    create_job(api, namespace, "del", nnodes=3)
    eventually(all_pods(api, namespace, "del", 3), what="3 pods")
    api[1].delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "del")
    eventually(lambda: pods_of(api, namespace, "del") == [], timeout=60, what="garbage collection of pods")
    eventually(lambda: not api[0].list_namespaced_service(namespace).items, timeout=60, what="service GC")


# ---- lost nodes ---------------------------------------------------------------------------------------

class Nodes:
    """Node objects and what their kubelets would do, for the nodes that answer: post the Ready
    condition's heartbeat every second, and confirm at once the deletion of a pod bound to the
    node (a kubelet stops the containers, then deletes the pod with grace 0). A lost node does
    neither: its pods stay Terminating. The nodes are deleted at the end (they are cluster-wide)."""

    def __init__(self, api, prefix: str):
        import threading

        self.core, self.prefix = api[0], prefix
        self.answering: set[str] = set()
        self.made: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._kubelets, daemon=True)
        self.thread.start()

    def add(self, name: str) -> str:
        name = f"{self.prefix}-{name}"
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        self.made.append(name)
        self._heartbeat(name)
        self.answering.add(name)
        return name

    def lose(self, name: str) -> None:
        self.answering.discard(name)

    def back(self, name: str) -> None:
        self._heartbeat(name)
        self.answering.add(name)

    def _heartbeat(self, name: str) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.core.patch_node_status(name, {"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "the test's kubelet",
            "lastHeartbeatTime": now, "lastTransitionTime": now}]}})

    def _kubelets(self) -> None:
        while not self.stop.wait(1.0):
            for name in list(self.answering):
                try:
                    self._heartbeat(name)
                    for pod in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
                        if pod.metadata.deletion_timestamp:
                            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                            grace_period_seconds=0)
                except Exception:  # a pod gone meanwhile, a node deleted at the end: next round
                    pass

    def close(self) -> None:
        """Stop the kubelets; force-delete the nodes' pods (the namespace's deletion would wait for
        kubelets forever), then the nodes."""
        self.stop.set()
        self.thread.join(timeout=10)
        for name in self.made:
            for pod in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
                self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            self.core.delete_node(name)


@pytest.fixture
def nodes(api, namespace):
    n = Nodes(api, namespace)
    yield n
    n.close()


def bind(api, namespace: str, pod: str, node: str) -> None:
    """Bind a pod to a node through the pods/binding subresource, as kube-scheduler does."""
    api[0].create_namespaced_pod_binding(pod, namespace, {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, _preload_content=False)


def run_on(api, ns, name, placement: dict[str, str], attempt: int) -> None:
    """Bind each rank's pod of an attempt to its node, then run it; the job is Running."""
    eventually(all_pods(api, ns, name, len(placement), attempt), what=f"pods of attempt {attempt}")
    for pod, node in placement.items():
        bind(api, ns, pod, node)
        kubelet(api, ns, pod, "Running")
    eventually(phase_is(api, ns, name, "Running"), what="phase Running")


def events_of(api, ns, name) -> list:
    return api[0].list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items


def test_a_lost_nodes_pod_never_confirmed_deleted_is_force_deleted_and_the_gang_runs_again(
        api, namespace, operator, nodes):
    create_job(api, namespace, "lost", nnodes=2, nodeLostTimeoutSeconds=5)
    good, bad = nodes.add("good"), nodes.add("bad")
    pods = eventually(all_pods(api, namespace, "lost", 2, 1), what="2 pods")
    unreachable = next(t for t in pods[1].spec.tolerations if t.key == "node.kubernetes.io/unreachable")
    assert (unreachable.effect, unreachable.toleration_seconds) == ("NoExecute", 5)
    run_on(api, namespace, "lost", {"lost-0": good, "lost-1": bad}, attempt=1)

    # The bad node stops answering; the taint manager evicts its pod as it does (the DisruptionTarget
    # condition, then a delete with a grace period), and no kubelet will ever confirm it.
    nodes.lose(bad)
    api[0].patch_namespaced_pod_status("lost-1", namespace, {"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint"}]}})
    api[0].delete_namespaced_pod("lost-1", namespace, grace_period_seconds=5)

    # A gang failure: attempt 2; lost-0 (whose kubelet answers) goes at once, lost-1 stays Terminating.
    st = eventually(lambda: (s := get_job(api, namespace, "lost")["status"]).get("attempt") == 2 and s,
                    what="attempt 2")
    assert st["phase"] == "Restarting" and st["restarts"] == 1
    assert (st["countedRestarts"], st["disruptionRestarts"]) == (0, 1), "a lost node is not the job's fault"
    restarting = next(c for c in st["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "NodeLost"
    assert restarting["message"].startswith(f"rank 1 (pod lost-1) lost with node {bad}: evicted by the taint manager")
    stuck = api[0].read_namespaced_pod("lost-1", namespace)
    assert stuck.metadata.deletion_timestamp and stuck.metadata.labels["razor.dev/attempt"] == "1"

    # 5 s after its grace period the operator gives up on it: force-deleted, and attempt 2 is created.
    pods = eventually(all_pods(api, namespace, "lost", 2, attempt=2), timeout=60, what="attempt 2's pods")
    assert all({e.name: e.value for e in p.spec.containers[0].env}["RAZOR_ATTEMPT"] == "2" for p in pods)
    note = f"rank 1 (pod lost-1) lost with node {bad}: not confirmed deleted 5s after its grace period; force-deleted"
    forced = eventually(lambda: [(e.type, e.message) for e in events_of(api, namespace, "lost")
                                 if e.reason == "ForceDeleted"], what="the ForceDeleted event")
    assert forced == [("Warning", note)]
    assert get_job(api, namespace, "lost")["status"]["message"].startswith(note)

    # The gang runs again, on a node that answers.
    run_on(api, namespace, "lost", {"lost-0": good, "lost-1": good}, attempt=2)
    st = get_job(api, namespace, "lost")["status"]
    assert (st["attempt"], st["restarts"]) == (2, 1)
    assert [(r["rank"], r["node"]) for r in st["ranks"]] == [(0, good), (1, good)]


def test_kubernetes_evicts_a_silent_nodes_pods_and_the_gang_runs_again_when_it_is_back(
        api, cluster, namespace, operator, nodes):
    flags = " ".join(cluster.flags["kube-controller-manager"])
    if "node-lifecycle-controller" not in flags or "taint-eviction-controller" not in flags:
        pytest.skip("the control plane runs no node lifecycle and taint eviction controllers")
    create_job(api, namespace, "evict", nnodes=2, nodeLostTimeoutSeconds=2, terminationGracePeriodSeconds=3)
    good, silent = nodes.add("good"), nodes.add("silent")
    run_on(api, namespace, "evict", {"evict-0": good, "evict-1": silent}, attempt=1)

    nodes.lose(silent)  # its heartbeats stop: kube-controller-manager does the rest
    st = eventually(lambda: (s := get_job(api, namespace, "evict")["status"]).get("attempt") == 2 and s,
                    timeout=90, what="the eviction of evict-1 and attempt 2")
    taints = api[0].read_node(silent).spec.taints or []
    assert ("node.kubernetes.io/unreachable", "NoExecute") in {(t.key, t.effect) for t in taints}
    restarting = next(c for c in st["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "NodeLost", restarting
    assert restarting["message"].startswith(
        f"rank 1 (pod evict-1) lost with node {silent}: evicted by the taint manager")

    eventually(all_pods(api, namespace, "evict", 2, attempt=2), timeout=60, what="attempt 2's pods")
    eventually(lambda: any(e.reason == "ForceDeleted" and f"lost with node {silent}" in e.message
                           for e in events_of(api, namespace, "evict")), what="the ForceDeleted event")

    nodes.back(silent)  # the node is back: its taint goes, and the gang runs on it again
    eventually(lambda: not any(t.effect == "NoExecute" for t in api[0].read_node(silent).spec.taints or []),
               timeout=60, what=f"the NoExecute taint of {silent} removed")
    run_on(api, namespace, "evict", {"evict-0": good, "evict-1": silent}, attempt=2)
    st = get_job(api, namespace, "evict")["status"]
    assert (st["phase"], st["attempt"], st["restarts"], st["countedRestarts"]) == ("Running", 2, 1, 0)
