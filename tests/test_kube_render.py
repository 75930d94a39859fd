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
