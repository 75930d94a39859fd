"""RazorJobs as users run them, on the real one-node cluster: ``helm install razor charts/razor``,
``kubectl apply -f job.yaml`` or ``razorctl submit``, pods that really train in containers,
rendezvous through the headless Service's DNS name, real exit codes, real signals.

The two ranks of a job share one hostPath folder as their work dir, standing in for the shared
volume (a PVC) docs/kubernetes.md asks for: both pods run on the one node, so "shared" here is a
folder of this host that the test reads back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, eventually
from kube_node import Cluster

from .conftest import SYSTEM_NS, get_json, razor_env, razorctl, razorctl_argv

UID = 65532
EPOCHS = 30          # long enough to kill a rank mid-training, short enough for CI
TEACHER_EPOCHS = 3


def results_dir(tmp_path: Path, name: str) -> Path:
    """A host folder the job's (non-root) pods can write: its work dir."""
    d = tmp_path / name
    d.mkdir()
    os.chown(d, UID, UID)
    return d


def kd_job(name: str, results: Path, **extra) -> dict:
    """The 2-node CPU knowledge distillation job of the README, with its work dir on a volume."""
    return {"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "metadata": {"name": name},
            "spec": {"config": "trainer/configs/digits_kd.yaml", "nnodes": 2, "gpusPerNode": 0,
                     "workDir": f"/results/{name}",
                     "cfgOptions": {"schedule.epochs": EPOCHS, "algorithm.teacher.epochs": TEACHER_EPOCHS},
                     "volumes": [{"name": "results", "hostPath": {"path": str(results), "type": "Directory"}}],
                     "volumeMounts": [{"name": "results", "mountPath": "/results"}],
                     **extra}}


def job_status(kube: Cluster, namespace: str, name: str) -> dict:
    return (get_json(kube, "razorjob", name, "-n", namespace) or {}).get("status") or {}


def summary(results: Path, name: str) -> dict:
    return json.loads((results / name / "summary.json").read_text())


def worker_pids(job: str, rank: int, attempt: int = 1) -> list[int]:
    """The training processes (torchrun's workers) of one rank of a job, found as any process on
    the node: by their environment (the launcher contract's, plus torchrun's LOCAL_RANK)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(e.split("=", 1) for e in (proc / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in e)
        except OSError:
            continue
        if (env.get("RAZOR_JOB_NAME") == job and env.get("NODE_RANK") == str(rank)
                and env.get("RAZOR_ATTEMPT") == str(attempt) and "LOCAL_RANK" in env):
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def uninterrupted(razor, kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 2-node KD job applied with kubectl and run to the end; what a user saw of it."""
    namespace = "node-uninterrupted"
    kube.kubectl("create", "namespace", namespace)
    tmp = tmp_path_factory.mktemp("uninterrupted")
    results = results_dir(tmp, "kd")
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(kd_job("kd", results)))
    seen: dict = {"phases": [], "results": results, "namespace": namespace}
    kube.kubectl("apply", "-n", namespace, "-f", str(path))

    def running() -> bool:
        phase = job_status(kube, namespace, "kd").get("phase")
        if phase and (not seen["phases"] or seen["phases"][-1] != phase):
            seen["phases"].append(phase)
        return phase in ("Running", "Succeeded", "Failed")

    eventually(running, 300, "the job to run", interval=0.5)
    # razorctl logs -f streams the kubelet's log of rank 0 while it trains.
    follow = subprocess.Popen([*razorctl_argv(), "logs", "kd", "--rank", "0", "-f", "-n", namespace],
                              cwd=ROOT, env=razor_env(kube), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    seen["follow"] = read_until(follow, "epoch", 240)
    # Rank 0's razor.node reports the job's progress to the operator (its projected token, no
    # RBAC) while it trains: the status has it before the job ends.
    seen["progress_running"] = eventually(
        lambda: (p := job_status(kube, namespace, "kd").get("progress")) and p.get("stage") != "done" and p,
        120, "status.progress while the job trains", interval=0.5)
    seen["status_running"] = razorctl(kube, "status", "kd", "-n", namespace)
    seen["table_running"] = kube.kubectl("get", "razorjobs", "-n", namespace).stdout
    seen["wait"] = razorctl(kube, "wait", "kd", "-n", namespace, "--timeout", "600", timeout=660)
    running()
    seen["table"] = kube.kubectl("get", "razorjobs", "-n", namespace).stdout
    seen["logs"] = razorctl(kube, "logs", "kd", "--rank", "0", "-n", namespace)
    seen["progress_end"] = job_status(kube, namespace, "kd").get("progress")
    return seen


def read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """The output of ``proc`` up to the first line containing ``needle``; then ``proc`` is ended."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                lines.append(line)
                if needle in line:
                    return "".join(lines)
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.1)
        raise AssertionError(f"no line with {needle!r} in {timeout:g}s; got:\n{''.join(lines)[-3000:]}")
    finally:
        proc.kill()
        proc.wait(10)


def operator_log(kube: Cluster) -> str:
    return kube.kubectl("logs", "-n", SYSTEM_NS, "deployment/razor-operator", "--tail=40", check=False).stdout


def test_the_operator_runs_in_cluster_from_the_chart(razor, kube: Cluster):
    assert "STATUS: deployed" in razor.stdout
    pods = get_json(kube, "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=razor")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Running"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    assert pod["spec"]["serviceAccountName"] == "razor-operator"
    labels = get_json(kube, "namespace", SYSTEM_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"  # it was admitted under it
    container = pod["status"]["containerStatuses"][0]
    assert container["image"].endswith("razor-operator:test")
    assert container["restartCount"] == 0


def test_a_2_node_kd_job_applied_with_kubectl_trains_in_pods(uninterrupted: dict, kube: Cluster):
    ns, results = uninterrupted["namespace"], uninterrupted["results"]
    assert uninterrupted["phases"][-1] == "Succeeded", uninterrupted["phases"]
    assert "Running" in uninterrupted["phases"], uninterrupted["phases"]
    assert uninterrupted["wait"].returncode == 0, uninterrupted["wait"].stdout + uninterrupted["wait"].stderr
    header, row = uninterrupted["table"].splitlines()[:2]
    assert header.split()[:2] == ["NAME", "PHASE"] and row.split()[:2] == ["kd", "Succeeded"], uninterrupted["table"]
    assert "epoch" in uninterrupted["follow"]
    logs = uninterrupted["logs"]
    assert logs.returncode == 0, logs.stderr
    assert "razor: done. student accuracy" in logs.stdout
    assert "weights identical on all 2 ranks" in logs.stdout
    s = summary(results, "kd")
    assert s["world_size"] == 2 and len(set(s["weights_digests"])) == 1, s
    assert s["accuracy"] > 0.8, s
    assert (results / "kd" / "last_checkpoint").exists()
    # The pods: both ranks ran on the node, rendezvoused at rank 0's DNS name.
    pods = get_json(kube, "pods", "-n", ns, "-l", "razor.dev/job-name=kd")["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["kd-0", "kd-1"]
    env = {e["name"]: e["value"] for e in pods[1]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"kd-0.kd.{ns}.svc"
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)


def test_a_training_job_reports_its_progress_to_its_status(uninterrupted: dict):
    """What `kubectl get razorjobs` and `razorctl status` show while the job trains, and at its end:
    the trainer's reports, through rank 0's razor.node and the operator's /progress endpoint."""
    during = uninterrupted["progress_running"]
    assert during["stage"] in ("train", "val"), during
    assert 0 <= during["percent"] < 100 and during["epochs"] >= 1, during
    assert "loss" in during.get("metrics", {}) or during["stage"] == "val", during
    assert during["lastUpdateTime"].endswith("Z"), during
    header, row = uninterrupted["table_running"].splitlines()[:2]
    assert "PROGRESS" in header.split(), uninterrupted["table_running"]
    status = uninterrupted["status_running"]
    assert status.returncode == 0, status.stderr
    assert re.search(r"progress: .*epoch \d+/\d+", status.stdout), status.stdout
    end = uninterrupted["progress_end"]
    assert end and end["stage"] == "done" and end["percent"] == 100, end


def test_a_killed_rank_restarts_the_gang_which_resumes_to_the_same_weights(
        uninterrupted: dict, kube: Cluster, namespace: str, tmp_path: Path):
    name = "kdf"
    results = results_dir(tmp_path, name)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(kd_job(name, results)))
    kube.kubectl("apply", "-n", namespace, "-f", str(path))
    # Once the student has a checkpoint, kill rank 1's training process (as the OOM killer would).
    eventually(lambda: any(results.glob(f"{name}/epoch_*.pth")), 300, "a student checkpoint", interval=0.2)
    pids = eventually(lambda: worker_pids(name, 1), 30, "rank 1's training process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    st = eventually(lambda: (s := job_status(kube, namespace, name)).get("attempt", 1) >= 2 and s, 120,
                    "attempt 2")
    # The status names the first failure the kubelet reported: rank 1's SIGKILL (128 + 9, the
    # worker's own end as razor.node reports it, not torchrun's 1), or, when its peer's report
    # reached the operator first, rank 0's follow-on exception (1): which comes first is a race.
    assert re.search(r"rank (1 \(pod kdf-1\) exited with code 137|0 \(pod kdf-0\) exited with code 1)",
                     st["message"]), st
    assert st["restarts"] == 1 and st["countedRestarts"] == 1, st  # a crash counts against backoffLimit
    out = razorctl(kube, "wait", name, "-n", namespace, "--timeout", "600", timeout=660)
    assert out.returncode == 0, out.stdout + out.stderr
    st = job_status(kube, namespace, name)
    assert st["phase"] == "Succeeded" and st["attempt"] == 2, st
    logs = kube.kubectl("logs", "-n", namespace, f"{name}-0").stdout
    assert "resum" in logs.lower(), logs[-3000:]
    # Exact resume: the same final weights as the job nobody interrupted.
    assert summary(results, name)["weights_digests"] == summary(uninterrupted["results"], "kd")["weights_digests"]


def test_razorctl_submit_status_cancel_and_render_against_the_cluster(razor, kube: Cluster, namespace: str,
                                                                      tmp_path: Path):
    results = results_dir(tmp_path, "sub")
    doc = kd_job("sub", results)
    doc["spec"]["cfgOptions"]["schedule.epochs"] = 200  # cancelled long before the end
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    # render prints what the operator creates: the cluster's defaults (cpuImage) included.
    rendered = razorctl(kube, "render", str(path), "-n", namespace, "-o", "json")
    assert rendered.returncode == 0, rendered.stderr
    out = razorctl(kube, "submit", str(path), "-n", namespace)
    assert out.returncode == 0, out.stderr
    eventually(lambda: job_status(kube, namespace, "sub").get("phase") == "Running", 300, "Running")
    created = get_json(kube, "pod", "sub-1", "-n", namespace)
    rendered_pod = json.loads(rendered.stdout)["items"][2]
    assert rendered_pod["spec"]["containers"][0]["image"] == created["spec"]["containers"][0]["image"]
    assert rendered_pod["spec"]["containers"][0]["env"] == created["spec"]["containers"][0]["env"]
    status = razorctl(kube, "status", "sub", "-n", namespace)
    assert status.returncode == 0 and "Running" in status.stdout, status.stdout + status.stderr
    cancel = razorctl(kube, "cancel", "sub", "-n", namespace)
    assert cancel.returncode == 0, cancel.stderr
    eventually(lambda: get_json(kube, "pods", "-n", namespace)["items"] == [], 180, "the pods to go")


def last_checkpoint(results: Path, name: str) -> str | None:
    pointer = results / name / "last_checkpoint"
    return pointer.read_text().strip() if pointer.exists() else None


def test_kubectl_delete_pod_saves_a_checkpoint_in_the_grace_period_and_the_gang_resumes(
        uninterrupted: dict, kube: Cluster, namespace: str, tmp_path: Path):
    """SIGTERM (kubectl delete pod) of a running rank: every rank stops at the same step, rank 0
    saves a checkpoint inside the pod's terminationGracePeriodSeconds and exits 75 (preempted);
    the gang comes back and resumes from that checkpoint to the same final weights."""
    name = "kdt"
    results = results_dir(tmp_path, name)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(kd_job(name, results, terminationGracePeriodSeconds=60)))
    kube.kubectl("apply", "-n", namespace, "-f", str(path))
    pod = eventually(lambda: get_json(kube, "pod", f"{name}-1", "-n", namespace), 60, "the pod")
    assert pod["spec"]["terminationGracePeriodSeconds"] == 60
    eventually(lambda: any(results.glob(f"{name}/epoch_*.pth")), 300, "a student checkpoint", interval=0.2)
    before = last_checkpoint(results, name)
    t0 = time.monotonic()
    kube.kubectl("delete", "pod", "-n", namespace, f"{name}-1", "--wait=false")
    # Rank 0 (not deleted) stops with its peer and says why, then exits 75.
    rank0 = eventually(lambda: (p := get_json(kube, "pod", f"{name}-0", "-n", namespace))
                       and p["status"]["phase"] == "Failed" and p, 120, "rank 0 to stop")
    stopped_in = time.monotonic() - t0
    term = rank0["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 75, term
    assert stopped_in < 60, f"rank 0 took {stopped_in:.0f}s to stop (grace 60s)"
    after = last_checkpoint(results, name)
    assert after and after != before, (before, after)
    out = razorctl(kube, "wait", name, "-n", namespace, "--timeout", "600", timeout=660)
    assert out.returncode == 0, out.stdout + out.stderr
    st = job_status(kube, namespace, name)
    assert st["phase"] == "Succeeded" and st["attempt"] == 2, st
    # A deleted pod is a disruption: the gang restarted without using up backoffLimit.
    assert st["restarts"] == 1 and st["countedRestarts"] == 0, st
    assert summary(results, name)["weights_digests"] == summary(uninterrupted["results"], "kd")["weights_digests"]


def test_a_lost_node_never_leaves_the_job_restarting_forever(razor, kube: Cluster, namespace: str,
                                                              tmp_path: Path):
    """The node dies (kubelet killed, and with it, as on a dead machine, the job's processes):
    Kubernetes marks the node unreachable, evicts the pods after nodeLostTimeoutSeconds, but no
    kubelet confirms; the operator force-deletes them, says why, and the gang runs again once a
    node is back."""
    name = "kdl"
    results = results_dir(tmp_path, name)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(kd_job(name, results, nodeLostTimeoutSeconds=5,
                                          terminationGracePeriodSeconds=10)))
    kube.kubectl("apply", "-n", namespace, "-f", str(path))
    eventually(lambda: worker_pids(name, 0) and worker_pids(name, 1), 300, "both ranks training")
    kube.stop_kubelet()
    try:
        for rank in (0, 1):
            for pid in worker_pids(name, rank):
                os.kill(pid, signal.SIGKILL)
        eventually(lambda: not kube.node_ready(), 90, "the node to be NotReady", interval=1)
        last: dict = {}

        def restarted() -> dict | None:
            last["status"] = job_status(kube, namespace, name)
            last["pods"] = kube.kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout
            return last["status"] if last["status"].get("attempt", 1) >= 2 else None

        try:
            st = eventually(restarted, 240, "the gang given up on and restarted", interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {last.get('status')}\npods:\n{last.get('pods')}\n"
                                 f"operator:\n{operator_log(kube)}") from None
        assert "lost" in st["message"] or any("lost" in (c.get("message") or "") for c in st["conditions"]), st
        # No kubelet confirms the evicted pods' deletion: the operator force-deletes them.
        events = eventually(lambda: (e := kube.kubectl("get", "events", "-n", namespace, "--field-selector",
                                                       "involvedObject.kind=RazorJob").stdout)
                            and "force-deleted" in e and e, 120, "the ForceDeleted event", interval=1)
        assert "ForceDeleted" in events, events
    finally:
        kube.start_kubelet()
    out = razorctl(kube, "wait", name, "-n", namespace, "--timeout", "600", timeout=660)
    assert out.returncode == 0, out.stdout + out.stderr
    st = job_status(kube, namespace, name)
    assert st["phase"] == "Succeeded" and st["countedRestarts"] == 0, st  # a lost node is no crash
