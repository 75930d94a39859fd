"""razorctl against a real API server: submit, render, status, list, wait, logs, cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import eventually
from k8s.test_operator import Operator, all_pods, kubelet, phase_is, pods_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "razorjob-digits-kd.yaml"


def razor_env(cluster) -> dict[str, str]:
    env = cluster.env(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def razorctl(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "razor.cli", *args], cwd=ROOT, env=razor_env(cluster),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def api(cluster):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as c:
        yield client.CoreV1Api(c), client.CustomObjectsApi(c)


def test_submit_status_list_wait_cancel(cluster, namespace, api, tmp_path):
    op = Operator(cluster, namespace, tmp_path / "operator.log").start()
    try:
        res = razorctl(cluster, "submit", str(EXAMPLE), "-n", namespace)
        assert res.returncode == 0, res.stderr
        assert f"razorjob.razor.dev/digits-kd created in namespace {namespace}" in res.stdout
        pods = eventually(all_pods(api, namespace, "digits-kd", 2), what="2 pods")

        # render prints exactly what the operator created (but for the owner's uid).
        rendered = list(yaml.safe_load_all(razorctl(cluster, "render", str(EXAMPLE), "-n", namespace).stdout))
        assert [o["kind"] for o in rendered] == ["Service", "Pod", "Pod"]
        for obj, pod in zip(rendered[1:], pods):
            env = {e.name: e.value for e in pod.spec.containers[0].env}
            assert {e["name"]: e["value"] for e in obj["spec"]["containers"][0]["env"]} == env
            assert obj["spec"]["containers"][0]["args"] == pod.spec.containers[0].args

        res = razorctl(cluster, "list", "-n", namespace)
        assert res.returncode == 0 and "digits-kd" in res.stdout and "NAME" in res.stdout
        res = razorctl(cluster, "list", "-A")
        assert namespace in res.stdout

        for pod in pods:
            kubelet(api, namespace, pod.metadata.name, "Running")
        eventually(phase_is(api, namespace, "digits-kd", "Running"), what="Running")
        res = razorctl(cluster, "status", "digits-kd", "-n", namespace)
        assert f"RazorJob {namespace}/digits-kd: Running" in res.stdout
        assert "rank 1: digits-kd-1 Running" in res.stdout
        assert yaml.safe_load(razorctl(cluster, "status", "digits-kd", "-n", namespace, "-o", "yaml").stdout
                              )["status"]["phase"] == "Running"

        waiter = subprocess.Popen([sys.executable, "-m", "razor.cli", "wait", "digits-kd", "-n", namespace,
                                   "--timeout", "60"], cwd=ROOT, env=razor_env(cluster),
                                  stdout=subprocess.PIPE, text=True)
        for pod in pods:
            kubelet(api, namespace, pod.metadata.name, "Succeeded", 0)
        out, _ = waiter.communicate(timeout=90)
        assert waiter.returncode == 0 and "Succeeded" in out

        res = razorctl(cluster, "cancel", "digits-kd", "-n", namespace)
        assert res.returncode == 0 and "deleted" in res.stdout
        eventually(lambda: pods_of(api, namespace, "digits-kd") == [], timeout=60, what="pods gone")
    finally:
        op.kill(signal.SIGTERM)


def test_clear_errors(cluster, namespace):
    res = razorctl(cluster, "status", "nope", "-n", namespace)
    assert res.returncode == 1 and f"razorctl: error: RazorJob {namespace}/nope:" in res.stderr
    assert "not found" in res.stderr and "Traceback" not in res.stderr
    res = razorctl(cluster, "submit", str(ROOT / "tests" / "bad_specs" / "nnodes-zero.yaml"), "-n", namespace)
    assert res.returncode == 2 and "spec.nnodes: must be greater than or equal to 1" in res.stderr
    res = razorctl(cluster, "submit", str(EXAMPLE), "-n", namespace)
    assert res.returncode == 0
    res = razorctl(cluster, "submit", str(EXAMPLE), "-n", namespace)
    assert res.returncode == 1 and "already exists" in res.stderr
    res = razorctl(cluster, "logs", "digits-kd", "-n", namespace, "--rank", "5")
    assert res.returncode == 1 and "logs of pod" in res.stderr and "Traceback" not in res.stderr


def test_render_uses_the_cluster_defaults_and_the_namespace_submit_would_use(cluster, tmp_path):
    """render prints what the operator would create: the cluster's defaults (the chart's ConfigMap,
    as razor-operator --defaults reads it) for the fields the job leaves out, and the kubeconfig
    context's namespace when neither -n nor the file names one (as submit)."""
    ns = "razor-system"
    cluster.kubectl("create", "namespace", ns, check=False)
    defaults = {"image": "registry.example.com:5000/team/razor-trainer:0.1.0",
                "cpuImage": "registry.example.com:5000/team/razor-trainer:0.1.0-cpu",
                "terminationGracePeriodSeconds": 45}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "razor-defaults", "namespace": ns},
          "data": {"defaults.yaml": yaml.safe_dump(defaults),
                   "progress-url": "http://razor-operator.razor-system.svc:8090/progress"}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(cm))
    try:
        out = razorctl(cluster, "render", str(EXAMPLE))
        assert out.returncode == 0, out.stderr
        svc, pod0, _ = yaml.safe_load_all(out.stdout)
        assert svc["metadata"]["namespace"] == "default"  # the context's namespace
        assert pod0["spec"]["containers"][0]["image"] == defaults["cpuImage"]  # a CPU job
        assert pod0["spec"]["terminationGracePeriodSeconds"] == 45
        env = {e["name"]: e["value"] for e in pod0["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == "digits-kd-0.digits-kd.default.svc"
        # Where the operator has the pods report progress (the chart writes it beside the defaults).
        assert env["RAZOR_PROGRESS_URL"] == "http://razor-operator.razor-system.svc:8090/progress"
        # A field the job sets is its own.
        job = yaml.safe_load(EXAMPLE.read_text())
        job["spec"]["image"] = "mine:1"
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        out = razorctl(cluster, "render", str(tmp_path / "job.yaml"), "-n", "other")
        pod0 = list(yaml.safe_load_all(out.stdout))[1]
        assert pod0["spec"]["containers"][0]["image"] == "mine:1"
        assert pod0["metadata"]["namespace"] == "other"
    finally:
        cluster.kubectl("delete", "configmap", "razor-defaults", "-n", ns)
    # No defaults to read: razor's own, and a note that says so.
    out = razorctl(cluster, "render", str(EXAMPLE))
    assert out.returncode == 0
    assert "razorctl: note: the cluster's RazorJob defaults (razor-system/razor-defaults): no such ConfigMap" \
        in out.stderr
    assert list(yaml.safe_load_all(out.stdout))[1]["spec"]["containers"][0]["image"] == "razor-trainer:0.1.0-cpu"
    bad = razorctl(cluster, "render", str(EXAMPLE), "--defaults-from", "nonsense")
    assert bad.returncode != 0 and "expected NAMESPACE/NAME" in bad.stderr
