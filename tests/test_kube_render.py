"""The Kubernetes renderer and the CRD: pure, checked against golden files."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from conftest import ROOT, job_doc
from razor import crd, kube
from razor.spec import parse_job

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("RAZOR_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; rerun with RAZOR_UPDATE_GOLDEN=1 if intended"


def gpu_job():
    return parse_job(job_doc(
        "kd", config="configs/kd.yaml", nnodes=4, gpusPerNode=8, image="registry.local/razor-trainer:1",
        cfgOptions={"optimizer.lr": 0.01}, env={"NCCL_DEBUG": "INFO"},
        resources={"requests": {"cpu": "32", "memory": "256Gi"}, "shmSize": "64Gi"},
        nodeSelector={"gpu": "h100"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        priorityClassName="training", schedulerName="volcano",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}]))


def test_objects_golden():
    objs = kube.objects(gpu_job(), "ml", uid="1234-uid", attempt=2)
    check_golden("k8s-kd-4x8.yaml", yaml.safe_dump_all(objs, sort_keys=False))


def test_pods_keep_the_contract_and_names():
    job = gpu_job()
    svc, *pods = kube.objects(job, "ml", uid="u")
    assert svc["metadata"]["name"] == "kd" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert [p["metadata"]["name"] for p in pods] == ["kd-0", "kd-1", "kd-2", "kd-3"]
    for rank, pod in enumerate(pods):
        spec = pod["spec"]
        assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == (f"kd-{rank}", "kd", "Never")
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == "kd-0.kd.ml.svc" and env["NODE_RANK"] == str(rank)
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in spec["volumes"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "u"


def test_host_network_gets_its_dns_policy_and_the_allocated_port():
    job = parse_job(job_doc("hn", config="c.yaml", nnodes=2, hostNetwork=True))
    pod = kube.pod(job, 1, "default", port=30123)
    assert pod["spec"]["hostNetwork"] is True and pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["MASTER_PORT"] == "30123"


def test_host_network_uses_the_allocated_port_even_over_a_fixed_one():
    """The one port rule: on the hosts' network the operator's allocation wins (a cluster's default
    port would otherwise put every hostNetwork job on one port); before it is made (razorctl
    render), the first port of the operator's range is shown."""
    for spec in ({}, {"port": 29700}, {"cfgOptions": {"dist_params.port": 29701}}):
        job = parse_job(job_doc("hn", config="c.yaml", hostNetwork=True, **spec))
        assert pod_env(kube.pod(job, 0, "ml", port=30123))["MASTER_PORT"] == "30123"
        assert kube.service(job, "ml", port=30123)["spec"]["ports"][0]["port"] == 30123
        assert pod_env(kube.pod(job, 0, "ml"))["MASTER_PORT"] == "29500"
    fixed = parse_job(job_doc("own", config="c.yaml", port=29700))
    assert pod_env(kube.pod(fixed, 0, "ml"))["MASTER_PORT"] == "29700"


def test_crd_file_is_current():
    path = ROOT / "crds" / "razorjob.yaml"
    assert path.read_text() == crd.render(), "crds/razorjob.yaml is stale: python -m razor.crd > crds/razorjob.yaml"


def test_crd_schema_covers_every_spec_field():
    from razor.spec import RazorJobSpec

    props = crd.spec_schema()["properties"]
    for name, field in RazorJobSpec.model_fields.items():
        assert (field.alias or name) in props


def test_the_port_is_the_specs_else_the_cfg_options_else_29500():
    def master_port(**spec):
        pod = kube.pod(parse_job(job_doc("p", config="c.yaml", **spec)), 0, "default")
        return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}["MASTER_PORT"]

    assert master_port() == master_port(port="auto") == "29500"
    assert master_port(port=29600) == "29600"
    assert master_port(cfgOptions={"dist_params.port": 29501}) == "29501"  # the seed's Option 2


def test_the_pods_security_context():
    job = parse_job(job_doc("s", config="c.yaml", podSecurityContext={"fsGroup": 65532, "runAsNonRoot": True}))
    assert kube.pod(job, 0, "default")["spec"]["securityContext"] == {"fsGroup": 65532, "runAsNonRoot": True}
    assert "securityContext" not in kube.pod(parse_job(job_doc("t", config="c.yaml")), 0, "default")["spec"]


def test_pods_leave_a_lost_node_after_node_lost_timeout_seconds():
    def tolerations(**spec):
        return kube.pod(parse_job(job_doc("t", config="c.yaml", **spec)), 0, "default")["spec"]["tolerations"]

    lost = [{"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 60} for k in ("not-ready", "unreachable")]
    assert tolerations() == lost
    assert [t["tolerationSeconds"] for t in tolerations(nodeLostTimeoutSeconds=15)] == [15, 15]
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists"}
    assert tolerations(tolerations=[gpu]) == [gpu, *lost]
    # A job's own toleration of such a taint wins (NoExecute, or every effect); NoSchedule does not count.
    mine = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": 600}
    assert tolerations(tolerations=[mine]) == [mine, lost[0]]
    forever = {"key": "node.kubernetes.io/not-ready", "operator": "Exists"}
    assert tolerations(tolerations=[forever]) == [forever, lost[1]]
    no_schedule = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}
    assert tolerations(tolerations=[no_schedule]) == [no_schedule, *lost]


def pod_env(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def test_the_pods_grace_and_razor_nodes_stop_grace_within_it():
    default = kube.pod(parse_job(job_doc("g", config="c.yaml")), 0, "default")
    assert default["spec"]["terminationGracePeriodSeconds"] == 120
    assert pod_env(default)["RAZOR_STOP_GRACE"] == "110"
    for grace, stop in ((45, "35"), (11, "1"), (5, "1"), (1, "1")):
        pod = kube.pod(parse_job(job_doc("g", config="c.yaml", terminationGracePeriodSeconds=grace)), 1, "ml")
        assert pod["spec"]["terminationGracePeriodSeconds"] == grace
        assert pod_env(pod)["RAZOR_STOP_GRACE"] == stop
        assert int(stop) <= grace


def test_pods_mount_no_service_account_token_unless_the_job_names_an_account():
    plain = kube.pod(parse_job(job_doc("a", config="c.yaml")), 0, "default")["spec"]
    assert plain["automountServiceAccountToken"] is False and "serviceAccountName" not in plain
    named = kube.pod(parse_job(job_doc("a", config="c.yaml", serviceAccountName="trainer")), 0, "default")["spec"]
    assert named["serviceAccountName"] == "trainer" and "automountServiceAccountToken" not in named


def test_every_pod_gets_the_seeds_port_beside_master_port():
    job = parse_job(job_doc("p", config="c.yaml", nnodes=3, port=29600))
    for pod in kube.objects(job, "ml")[1:]:
        env = pod_env(pod)
        assert env["PORT"] == env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "29600"
    hn = kube.pod(parse_job(job_doc("hn", config="c.yaml", hostNetwork=True)), 0, "ml", port=30123)
    assert pod_env(hn)["PORT"] == pod_env(hn)["MASTER_PORT"] == "30123"


def test_a_cpu_jobs_pods_run_the_cpu_image():
    cpu = kube.pod(parse_job(job_doc("c", config="c.yaml")), 0, "default")
    gpu = kube.pod(parse_job(job_doc("g", config="c.yaml", gpusPerNode=2)), 0, "default")
    assert cpu["spec"]["containers"][0]["image"] == "razor-trainer:0.1.0-cpu"
    assert gpu["spec"]["containers"][0]["image"] == "razor-trainer:0.1.0"


def test_the_pvc_example_keeps_the_work_dir_on_the_claim():
    """examples/razorjob-pvc.yaml: every pod mounts the claim, the work dir (relative to the
    image's /app) is inside the mount, and the pods' fsGroup is the image's user's group."""
    from razor.spec import load_job

    job = load_job(ROOT / "examples" / "razorjob-pvc.yaml")
    assert job.spec.nnodes >= 2 and job.spec.gpus_per_node == 0
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in job.spec.volumes if "persistentVolumeClaim" in v}
    assert claims, "the example mounts a PersistentVolumeClaim"
    for pod in kube.objects(job, "ml")[1:]:
        spec = pod["spec"]
        assert spec["securityContext"]["fsGroup"] == 65532
        (container,) = spec["containers"]
        workdir = Path(container.get("workingDir", "/app")) / pod_env(pod)["RAZOR_WORK_DIR"]
        mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
        assert any(workdir.is_relative_to(m["mountPath"]) and workdir != Path(m["mountPath"])
                   for m in mounts), (workdir, mounts)
        assert all({"name": name, "persistentVolumeClaim": {"claimName": claim}} in spec["volumes"]
                   for name, claim in claims.items())


def test_pods_report_progress_with_a_token_for_the_operator_alone():
    """A token the API server does not take (audience razor-operator), read-only, renewed by the
    kubelet; the URL only when the operator has one (--progress-url); the failure message's file
    and its fallback to the log."""
    job = parse_job(job_doc("p", config="c.yaml"))
    pod = kube.pod(job, 0, "ml", progress_url="http://razor-operator.razor-system.svc:8090/progress")
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert {"name": "razor-progress", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "razor-operator", "expirationSeconds": 3600, "path": "token"}}]}} in spec["volumes"]
    assert {"name": "razor-progress", "mountPath": "/var/run/secrets/razor.dev/progress", "readOnly": True} \
        in container["volumeMounts"]
    env = pod_env(pod)
    assert env["RAZOR_PROGRESS_URL"] == "http://razor-operator.razor-system.svc:8090/progress"
    assert env["RAZOR_PROGRESS_TOKEN_FILE"] == "/var/run/secrets/razor.dev/progress/token"
    assert env["RAZOR_TERMINATION_LOG"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert spec["automountServiceAccountToken"] is False
    assert "RAZOR_PROGRESS_URL" not in pod_env(kube.pod(job, 0, "ml"))  # razorctl render: no operator's URL
    # A user's spec.env cannot redirect the reports.
    mine = parse_job(job_doc("p", config="c.yaml", env={"NCCL_DEBUG": "INFO"}))
    assert pod_env(kube.pod(mine, 0, "ml", progress_url="http://o/progress"))["RAZOR_PROGRESS_URL"] == "http://o/progress"


def test_the_crd_has_the_progress_and_its_column():
    version = crd.crd()["spec"]["versions"][0]
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns[:2] == [("Phase", ".status.phase"), ("Progress", ".status.progress.percent")]
    progress = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["progress"]
    assert set(progress["properties"]) == {"stage", "epoch", "epochs", "step", "steps", "percent", "etaSeconds",
                                           "metrics", "samplesPerSecond", "lastUpdateTime", "attempt"}
    assert progress["properties"]["metrics"]["additionalProperties"] == {"type": "number"}
    assert progress["properties"]["percent"]["maximum"] == 100


# ---- spec.gang: the job's PodGroup and the pods' link to it --------------------------------------


def gang_job(gang: str, **spec):
    return parse_job(job_doc("kd", config="c.yaml", nnodes=4, gang=gang, **spec))


def test_gang_objects_golden():
    """One golden file for the three gang schedulers: the PodGroup each reads and rank 0's pod."""
    docs = []
    for gang in ("native", "volcano", "coscheduling"):
        _svc, group, pod0, *_ = kube.objects(gang_job(gang), "ml", uid="1234-uid")
        docs += [group, {"metadata": pod0["metadata"],
                         "spec": {k: pod0["spec"][k] for k in ("schedulingGroup", "schedulerName")
                                  if k in pod0["spec"]}}]
    check_golden("k8s-gang-podgroups.yaml", yaml.safe_dump_all(docs, sort_keys=False))


def test_no_gang_no_pod_group_and_no_link():
    objs = kube.objects(gang_job("none"), "ml", uid="u")
    assert [o["kind"] for o in objs] == ["Service", "Pod", "Pod", "Pod", "Pod"]
    assert kube.pod_group(gang_job("none"), "ml") is None
    pod = objs[1]
    assert "schedulingGroup" not in pod["spec"] and "schedulerName" not in pod["spec"]
    assert kube.COSCHEDULING_GROUP_LABEL not in pod["metadata"]["labels"]
    assert kube.VOLCANO_GROUP_ANNOTATION not in pod["metadata"].get("annotations", {})


def test_native_gang_pod_group_has_min_count_nnodes_and_is_owned_by_the_job():
    job = gang_job("native")
    svc, group, *pods = kube.objects(job, "ml", uid="u")
    assert group["apiVersion"] == "scheduling.k8s.io/v1alpha2" and group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "kd" and group["metadata"]["namespace"] == "ml"
    assert group["spec"] == {"schedulingPolicy": {"gang": {"minCount": 4}}}
    assert group["metadata"]["ownerReferences"] == [kube.owner_reference(job, "u")]
    assert group["metadata"]["labels"] == svc["metadata"]["labels"]
    assert len(pods) == 4 and all(p["spec"]["schedulingGroup"] == {"podGroupName": "kd"} for p in pods)
    # razorctl render (no uid known): no ownerReference
    assert "ownerReferences" not in kube.pod_group(job, "ml")["metadata"]


def test_volcano_gang_annotates_the_pods_and_picks_volcano_unless_the_job_names_a_scheduler():
    _, group, pod, *_ = kube.objects(gang_job("volcano"), "ml", uid="u")
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1" and group["spec"] == {"minMember": 4}
    assert pod["metadata"]["annotations"] == {"scheduling.k8s.io/group-name": "kd"}
    assert pod["spec"]["schedulerName"] == "volcano"
    own = parse_job(job_doc("kd", config="c.yaml", nnodes=2, gang="volcano", schedulerName="volcano-gpu"))
    assert kube.pod(own, 0, "ml")["spec"]["schedulerName"] == "volcano-gpu"
    mine = parse_job({**job_doc("kd", config="c.yaml", nnodes=2, gang="volcano"),
                      "metadata": {"name": "kd", "annotations": {"a": "b"}}})
    assert kube.pod(mine, 0, "ml")["metadata"]["annotations"] == {"a": "b", "scheduling.k8s.io/group-name": "kd"}
    assert mine.metadata.annotations == {"a": "b"}  # the job's own mapping is not changed


def test_coscheduling_gang_labels_the_pods():
    _, group, pod, *_ = kube.objects(gang_job("coscheduling", schedulerName="scheduler-plugins-scheduler"),
                                     "ml", uid="u")
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["spec"] == {"minMember": 4}
    assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "kd"
    assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    assert "annotations" not in pod["metadata"] and "schedulingGroup" not in pod["spec"]


def test_razorctl_render_shows_the_pod_group():
    from razor.backends import kubernetes

    items = yaml.safe_load_all(kubernetes.render(gang_job("native"), "ml"))
    assert [(o["kind"], o["metadata"]["name"]) for o in items][:3] == [("Service", "kd"), ("PodGroup", "kd"),
                                                                        ("Pod", "kd-0")]
