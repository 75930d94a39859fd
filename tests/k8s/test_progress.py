"""Progress reports and failure messages against a real kube-apiserver.

The pods' projected tokens are made here with the TokenRequest API, bound to the pod as the
kubelet binds them (``kubectl create token --bound-object-kind Pod``), and POSTed to the
operator's endpoint as razor.node does; the TokenReviews are the API server's own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from conftest import eventually
from k8s.test_operator import api  # noqa: F401  (a fixture)
from k8s.test_operator import Operator, _free_port, all_pods, create_job, get_job, kubelet, phase_is
from k8s.test_razorctl_k8s import razorctl

pytestmark = pytest.mark.k8s

AUDIENCE = "razor-operator"
REPORT = {"stage": "train", "epoch": 2, "epochs": 5, "step": 30, "steps": 100, "percent": 43.5,
          "etaSeconds": 80, "metrics": {"loss": 0.231, "accuracy": 0.91}, "samplesPerSecond": 512.0}


def pod_token(cluster, namespace: str, pod: str | None, audience: str = AUDIENCE,
              service_account: str = "default") -> str:
    """A ServiceAccount token as the kubelet projects one into ``pod`` (TokenRequest, bound to
    the pod); ``pod`` None: bound to nothing."""
    bound = []
    if pod is not None:
        uid = cluster.kubectl("get", "pod", pod, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
        bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod}", f"--bound-object-uid={uid}"]
    return cluster.kubectl("create", "token", service_account, "-n", namespace, f"--audience={audience}",
                           "--duration=10m", *bound).stdout.strip()


def post_progress(url: str, token: str | None, body: bytes | dict) -> tuple[int, dict]:
    """POST a report as razor.node does: (HTTP status, the JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def op(cluster, namespace, tmp_path):
    """razor-operator with its progress endpoint on a free port of 127.0.0.1 (the chart's Service)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/progress"
    operator = Operator(cluster, namespace, tmp_path / "operator.log",
                        ("--progress-port", str(port), "--progress-address", "127.0.0.1", "--progress-url", url))
    operator.url = url
    operator.start()
    yield operator
    operator.kill(signal.SIGTERM)


def running_job(api, ns: str, name: str, nnodes: int = 2, **spec) -> list:
    create_job(api, ns, name, nnodes=nnodes, **spec)
    pods = eventually(all_pods(api, ns, name, nnodes, attempt=1), what=f"{nnodes} pods")
    for pod in pods:
        kubelet(api, ns, pod.metadata.name, "Running")
    eventually(phase_is(api, ns, name, "Running"), what="Running")
    return pods


def test_the_pods_carry_a_token_for_the_operator_alone_and_its_url(cluster, api, namespace, op):
    pods = running_job(api, namespace, "kd")
    spec = pods[0].spec
    env = {e.name: e.value for e in spec.containers[0].env}
    assert env["RAZOR_PROGRESS_URL"] == op.url
    assert env["RAZOR_PROGRESS_TOKEN_FILE"] == "/var/run/secrets/razor.dev/progress/token"
    assert env["RAZOR_TERMINATION_LOG"] == "/dev/termination-log"
    assert spec.containers[0].termination_message_policy == "FallbackToLogsOnError"
    (volume,) = [v for v in spec.volumes if v.projected]
    (source,) = volume.projected.sources
    assert (source.service_account_token.audience, source.service_account_token.expiration_seconds) == \
        (AUDIENCE, 3600)
    # No API token: the progress token is not one the API server takes.
    assert spec.automount_service_account_token is False
    token = pod_token(cluster, namespace, "kd-0")
    out = subprocess.run([str(cluster.bin_dir / "kubectl"), f"--server={cluster.server}",
                          f"--certificate-authority={cluster.ca_file}", f"--token={token}",
                          "get", "pods", "-n", namespace], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "You must be logged in to the server" in out.stderr, out.stderr  # 401


def test_a_rank_reports_progress_and_razorctl_shows_it(cluster, api, namespace, op):
    running_job(api, namespace, "kd")
    token = pod_token(cluster, namespace, "kd-0")
    code, answer = post_progress(op.url, token, {"progress": {**REPORT, "lastUpdateTime": "2026-12-01T06:00:00Z"}})
    assert (code, answer["status"], answer["attempt"]) == (200, "stored", 1), answer
    progress = get_job(api, namespace, "kd")["status"]["progress"]
    assert progress == {**REPORT, "lastUpdateTime": "2026-12-01T06:00:00Z", "attempt": 1}

    table = cluster.kubectl("get", "rj", "kd", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "PROGRESS"] and table[1].split()[:3] == ["kd", "Running", "43.5"]
    res = razorctl(cluster, "status", "kd", "-n", namespace)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("  progress: "))
    # (The API server keeps a map's keys in order: the metrics come back sorted by name.)
    assert line.startswith("  progress: epoch 2/5, step 30/100, 43%, ETA 1m20s, accuracy 0.910, loss 0.231, "
                           "512 samples/s, updated "), res.stdout
    assert "[#" not in res.stdout  # no bar: not a terminal
    doc = json.loads(razorctl(cluster, "status", "kd", "-n", namespace, "-o", "json").stdout)
    assert doc["status"]["progress"] == progress

    # A later report replaces it, field by field (no stale metric stays); an older one is dropped.
    code, _ = post_progress(op.url, token, {"progress": {"epoch": 3, "epochs": 5, "metrics": {"loss": 0.1},
                                                         "lastUpdateTime": "2026-12-01T06:01:00Z"}})
    assert code == 200
    assert get_job(api, namespace, "kd")["status"]["progress"] == {
        "epoch": 3, "epochs": 5, "metrics": {"loss": 0.1}, "lastUpdateTime": "2026-12-01T06:01:00Z", "attempt": 1}
    code, answer = post_progress(op.url, token, {"progress": {"epoch": 1, "lastUpdateTime": "2026-12-01T05:00:00Z"}})
    assert (code, answer) == (200, {"status": "ignored", "reason": "a later report is stored already"})
    assert get_job(api, namespace, "kd")["status"]["progress"]["epoch"] == 3


BAD_REPORTS = [
    ({"progress": {"percent": 140}}, "progress.percent: must be at most 100"),
    ({"progress": {"epoch": -1}}, "progress.epoch: must be a whole number >= 0"),
    ({"progress": {"epoch": True}}, "progress.epoch: must be a whole number >= 0"),
    ({"progress": {"metrics": {"loss": "low"}}}, "progress.metrics.loss: must be a number"),
    ({"progress": {"lastUpdateTime": "yesterday"}}, "progress.lastUpdateTime: must be an RFC 3339 time"),
    ({"progress": {"phase": "Succeeded"}}, "progress.phase: unknown field"),
    ({"status": {"phase": "Succeeded"}}, 'the body must be {"progress": {...}}'),
    (b'{"progress": {"percent": NaN}}', "the body is not JSON"),
    (b"x" * 20000, "a progress report has at most 16384 bytes"),
]


def test_a_bad_report_is_refused_naming_the_field(cluster, api, namespace, op):
    running_job(api, namespace, "kd", nnodes=1)
    token = pod_token(cluster, namespace, "kd-0")
    for body, error in BAD_REPORTS:
        code, answer = post_progress(op.url, token, body)
        assert code == (413 if "at most 16384" in error else 400) and error in answer["error"], (body, answer)
    assert "progress" not in get_job(api, namespace, "kd")["status"]


def test_only_a_rank_of_a_razorjob_may_report(cluster, api, namespace, op):
    running_job(api, namespace, "kd", nnodes=1)
    report = {"progress": REPORT}
    # No token, a token for another audience (the API server's own): 401.
    assert post_progress(op.url, None, report)[0] == 401
    assert post_progress(op.url, "not-a-token", report)[0] == 401
    code, answer = post_progress(op.url, pod_token(cluster, namespace, "kd-0", audience="https://kubernetes.default.svc"),
                                 report)
    assert code == 401 and "audience razor-operator" in answer["error"], answer
    # A token of the namespace's ServiceAccount bound to no pod, and one of a pod that is no rank: 403.
    code, answer = post_progress(op.url, pod_token(cluster, namespace, None), report)
    assert code == 403 and f"system:serviceaccount:{namespace}:default is not a pod" in answer["error"], answer
    cluster.kubectl("run", "stranger", "-n", namespace, "--image=busybox", "--labels=razor.dev/job-name=kd,"
                    "razor.dev/node-rank=0,razor.dev/attempt=1", "--restart=Never")
    code, answer = post_progress(op.url, pod_token(cluster, namespace, "stranger"), report)
    assert code == 403 and f"pod {namespace}/stranger is no rank of a RazorJob" in answer["error"], answer
    assert "progress" not in get_job(api, namespace, "kd")["status"]
    # Wrong method or path.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(op.url, timeout=10)
    assert err.value.code == 405


def _terminated(api, ns: str, pod: str, code: int, message: str) -> None:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    api[0].patch_namespaced_pod_status(pod, ns, {"status": {"phase": "Failed", "containerStatuses": [{
        "name": "trainer", "ready": False, "restartCount": 0, "image": "razor-trainer", "imageID": "",
        "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message,
                                 "startedAt": now, "finishedAt": now}}}]}})


TRACEBACK = "\n".join([
    "rank 3 exited with code 1: ValueError: the batch is empty",
    "Traceback (most recent call last):",
    *[f'  File "/app/razor_trainer/train.py", line {i}, in step' for i in range(100, 160)],
    "    raise ValueError('the batch is empty')",
    "ValueError: the batch is empty",
])


def test_a_failed_ranks_message_reaches_the_status_the_event_and_razorctl(cluster, api, namespace, op):
    running_job(api, namespace, "kd", restartBackoffSeconds=60)  # the message stays while the backoff runs
    old_token = pod_token(cluster, namespace, "kd-0")
    assert post_progress(op.url, old_token, {"progress": REPORT})[0] == 200  # trusted (cached) from now on
    _terminated(api, namespace, "kd-1", 1, TRACEBACK)
    eventually(lambda: get_job(api, namespace, "kd")["status"].get("attempt") == 2, what="attempt 2")
    status = get_job(api, namespace, "kd")["status"]
    message = status["message"]
    head = ("rank 1 (pod kd-1) exited with code 1 (Error), its process rank 3: ValueError: the batch is empty; "
            "restarting all 2 rank(s) as attempt 2 in 60s (restart 1 of 3)")
    assert message.startswith(f"{head}\n...\n"), message
    assert message.endswith("    raise ValueError('the batch is empty')\nValueError: the batch is empty")
    assert len(message) < 1000
    assert status["failedRanks"][0]["message"].startswith("rank 3 exited with code 1: ValueError")
    events = eventually(lambda: [e for e in api[0].list_namespaced_event(
        namespace, field_selector="involvedObject.name=kd").items if e.reason == "Restarting"], what="the event")
    assert events[0].message == message
    res = razorctl(cluster, "status", "kd", "-n", namespace)
    assert f"  message:  {head}\n            ...\n" in res.stdout, res.stdout
    # The progress of attempt 1 stays until attempt 2 reports; attempt 1 reports no more.
    assert status["progress"]["attempt"] == 1
    code, answer = post_progress(op.url, old_token, {"progress": REPORT})
    assert (code, answer["status"], answer["reason"]) == (200, "ignored", "attempt 1 reported, attempt 2 runs")


def test_a_stalled_rank_fails_with_its_stall_message(cluster, api, namespace, op):
    running_job(api, namespace, "kd", restartBackoffSeconds=0, retryableExitCodes=[124])
    _terminated(api, namespace, "kd-0", 124, "no progress for 300 s since epoch 2 step 30")
    eventually(lambda: get_job(api, namespace, "kd")["status"].get("attempt") == 2, what="attempt 2")
    message = get_job(api, namespace, "kd")["status"]["message"]
    assert message.startswith("rank 0 (pod kd-0) exited with code 124 (Error): no progress for 300 s since "
                              "epoch 2 step 30; restarting all 2 rank(s) as attempt 2"), message
    assert "retryable" in message


def test_a_finished_job_takes_no_more_reports(cluster, api, namespace, op):
    pods = running_job(api, namespace, "kd", nnodes=1)
    token = pod_token(cluster, namespace, "kd-0")
    kubelet(api, namespace, pods[0].metadata.name, "Succeeded", 0)
    eventually(phase_is(api, namespace, "kd", "Succeeded"), what="Succeeded")
    code, answer = post_progress(op.url, token, {"progress": REPORT})
    assert (code, answer) == (200, {"status": "ignored", "reason": f"RazorJob {namespace}/kd has succeeded"})


def test_the_progress_token_keeps_the_pods_within_the_pod_security_standards(cluster, namespace):
    """A projected ServiceAccount token is a volume type the "restricted" standard allows: the
    pods are admitted as before (their own securityContext decides the rest)."""
    from razor import kube
    from razor.spec import parse_job

    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline",
                    "pod-security.kubernetes.io/warn=restricted")
    job = parse_job({"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": "pss"},
                     "spec": {"config": "c.yaml", "podSecurityContext": {
                         "runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}}})
    pod = kube.pod(job, 0, namespace, progress_url="http://razor-operator.razor-system.svc:8090/progress")
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode == 0, out.stderr
    # Restricted asks only for what a container's securityContext says, not for another volume.
    assert "volume" not in out.stderr and "projected" not in out.stderr, out.stderr
    restricted = json.loads(json.dumps(pod))
    restricted["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    cluster.kubectl("label", "namespace", namespace, "--overwrite", "pod-security.kubernetes.io/enforce=restricted")
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(restricted), check=False)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
