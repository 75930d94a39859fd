"""The RazorJob spec: defaults filled in one place, every error found and named by its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, job_doc, razorctl
from razor import crd
from razor.spec import (CLUSTER_DEFAULTS, DEFAULT_CPU_IMAGE, DEFAULT_IMAGE, SpecError, load_job, parse_cluster_defaults,
                        parse_job, with_cluster_defaults)

BAD = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [line.removeprefix("# expect:").strip()
            for line in path.read_text().splitlines() if line.startswith("# expect:")]


def test_defaults_are_filled():
    job = parse_job(job_doc("digits", config="configs/resnet18_8xb32.yaml"))
    spec = job.spec
    assert (spec.nnodes, spec.gpus_per_node, spec.nproc_per_node) == (1, 0, 1)
    assert spec.port == 29500
    assert spec.work_dir == "work_dirs/resnet18_8xb32"
    assert spec.auto_scale_lr is True and spec.resume == "auto"
    doc = job.to_dict()
    assert doc["spec"]["nprocPerNode"] == 1 and doc["spec"]["workDir"] == "work_dirs/resnet18_8xb32"
    assert doc["spec"]["autoScaleLR"] is True


def test_nproc_defaults_to_gpus_and_workdir_to_script_stem():
    spec = parse_job(job_doc("x", script="train_mine.py", gpusPerNode=4)).spec
    assert spec.nproc_per_node == 4
    assert spec.work_dir == "work_dirs/train_mine"


def test_full_spec_round_trips():
    doc = job_doc(
        "kd", config="c.yaml", nnodes=2, gpusPerNode=8, port="auto", workDir="/data/wd",
        cfgOptions={"optimizer.lr": 0.01, "model.hidden": [64, 32]},
        autoScaleLR={"baseBatchSize": 512}, resume="never", image="registry.local/trainer:1",
        env={"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": 4},
        resources={"requests": {"cpu": 8, "memory": "64Gi"}, "shmSize": "16Gi"},
        slurm={"partition": "gpu", "cpusPerTask": 16, "time": "1-00:00:00", "srunArgs": ["--exclusive"]},
    )
    job = parse_job(doc)
    assert job.spec.env["OMP_NUM_THREADS"] == "4"
    assert job.spec.auto_scale_lr.base_batch_size == 512
    again = parse_job(job.to_dict())
    assert again == job


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_is_refused_naming_the_field(path: Path):
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(SpecError) as err:
        load_job(path)
    found = [str(e) for e in err.value.errors]
    for want in expected:
        assert any(want in f for f in found), f"{want!r} not among {found}"
    assert str(path) in str(err.value)


def test_bad_specs_are_many():
    assert len(BAD) >= 20


def test_every_error_is_reported_not_just_the_first():
    with pytest.raises(SpecError) as err:
        load_job(Path(__file__).parent / "bad_specs" / "many-errors.yaml")
    assert len(err.value.errors) == 4


def test_razorctl_refuses_bad_specs_and_starts_nothing(tmp_path: Path):
    for path in BAD:
        res = razorctl("submit", "--local", str(path), cwd=tmp_path, timeout=60)
        assert res.returncode == 2, (path.name, res.stdout, res.stderr)
        assert "is not a valid RazorJob" in res.stderr
        for want in expectations(path):
            assert want.split(":")[0] in res.stderr, (path.name, res.stderr)
        assert res.stdout == ""
    assert list(tmp_path.iterdir()) == [], "a refused job must not create anything"


def test_examples_are_valid():
    examples = sorted((ROOT / "examples").glob("razorjob-*.yaml"))
    assert examples
    for path in examples:
        load_job(path)


def test_docs_describe_every_field():
    from razor.spec import Metadata, RazorJobSpec, Resources, ScaleLR, Slurm

    doc = (ROOT / "docs" / "spec.md").read_text()
    for model, prefix in ((Metadata, ""), (RazorJobSpec, ""), (Resources, "resources."),
                          (Slurm, "slurm."), (ScaleLR, "")):
        for name, field in model.model_fields.items():
            alias = field.alias or name
            assert re.search(rf"[`{{]{re.escape(prefix + alias)}[`.:]", doc), f"{prefix}{alias}"


# ---- a cluster's defaults (razor-operator --defaults, the chart's `defaults`) --------------------


def test_cluster_defaults_fill_only_what_a_job_leaves_out():
    defaults = parse_cluster_defaults({"image": "registry.local/razor-trainer:2", "backoffLimit": 1,
                                       "priorityClassName": "batch", "port": 29600})
    mine = parse_job(with_cluster_defaults(job_doc("a", config="c.yaml", backoffLimit=5), defaults))
    assert mine.spec.image == "registry.local/razor-trainer:2" and mine.spec.priority_class_name == "batch"
    assert mine.spec.backoff_limit == 5 and mine.spec.port == 29600
    # cfgOptions' dist_params.port rules: the cluster's port is not added to disagree with it.
    cfg = job_doc("b", config="c.yaml", cfgOptions={"dist_params.port": 29501})
    assert parse_job(with_cluster_defaults(cfg, defaults)).spec.cfg_options == {"dist_params.port": 29501}
    # Without the cluster's, razor's own.
    assert parse_job(with_cluster_defaults(job_doc("c", config="c.yaml", gpusPerNode=1), {})).spec.image == DEFAULT_IMAGE
    assert parse_job(with_cluster_defaults(job_doc("c", config="c.yaml"), {})).spec.image == DEFAULT_CPU_IMAGE


def test_razorctl_leaves_the_cluster_defaults_to_the_cluster():
    job = parse_job(job_doc("a", config="c.yaml", backoffLimit=5, port="auto"))
    sent = job.to_dict(cluster_defaults=True)["spec"]
    assert sent["backoffLimit"] == 5 and sent["port"] == "auto" and sent["nnodes"] == 1
    assert not {"image", "masterAddrTimeoutSeconds", "permanentExitCodes", "terminationGracePeriodSeconds"} & set(sent)
    # razorctl validate/render show them all: a CPU job's image is the CPU variant.
    assert job.to_dict()["spec"]["image"] == DEFAULT_CPU_IMAGE
    assert job.to_dict()["spec"]["terminationGracePeriodSeconds"] == 120


@pytest.mark.parametrize("doc, message", [
    ({"imag": "x"}, "defaults.imag: is not a field a cluster can default (did you mean 'image'?"),
    ({"nnodes": 2}, "defaults.nnodes: is not a field a cluster can default"),
    ({"backoffLimit": -1}, "defaults.backoffLimit: must be greater than or equal to 0 (got -1)"),
    ({"image": "a b"}, "defaults.image: 'a b' is not an image reference"),
    ({"port": 80}, "defaults.port:"),
    ({"terminationGracePeriodSeconds": 0},
     "defaults.terminationGracePeriodSeconds: must be greater than or equal to 1 (got 0)"),
    ({"cpuImage": "razor trainer"}, "defaults.cpuImage: 'razor trainer' is not an image reference"),
    ({"cpuImage": 5}, "defaults.cpuImage: must be a string (got 5)"),
    ({"cpuimage": "x"}, "defaults.cpuimage: is not a field a cluster can default (did you mean 'cpuImage'?"),
    (["image"], "defaults: expected a mapping of spec fields, got list"),
])
def test_bad_cluster_defaults_name_the_field(doc, message):
    with pytest.raises(SpecError) as err:
        parse_cluster_defaults(doc, "--defaults d.yaml")
    assert str(err.value).startswith("--defaults d.yaml is not a valid set of RazorJob defaults:")
    assert message in str(err.value)


def test_every_cluster_default_is_a_spec_field():
    from razor.spec import RazorJobSpec
    assert set(CLUSTER_DEFAULTS) <= {f.alias or n for n, f in RazorJobSpec.model_fields.items()}


def test_node_lost_timeout_seconds_is_checked_and_a_cluster_may_default_it():
    assert parse_job(job_doc("a", config="c.yaml")).spec.node_lost_timeout_seconds == 60
    with pytest.raises(SpecError) as err:
        parse_job(job_doc("a", config="c.yaml", nodeLostTimeoutSeconds=0))
    assert "spec.nodeLostTimeoutSeconds: must be greater than or equal to 1 (got 0)" in str(err.value)
    defaults = parse_cluster_defaults({"nodeLostTimeoutSeconds": 30})
    assert parse_job(with_cluster_defaults(job_doc("b", config="c.yaml"), defaults)).spec.node_lost_timeout_seconds == 30
    mine = job_doc("c", config="c.yaml", nodeLostTimeoutSeconds=600)
    assert parse_job(with_cluster_defaults(mine, defaults)).spec.node_lost_timeout_seconds == 600


# ---- images: the CUDA build for GPU jobs, the CPU variant for CPU jobs -------------------------------


def test_a_job_without_an_image_gets_the_cuda_build_or_the_cpu_variant():
    assert (DEFAULT_IMAGE, DEFAULT_CPU_IMAGE) == ("razor-trainer:0.1.0", "razor-trainer:0.1.0-cpu")
    cpu = parse_job(job_doc("c", config="c.yaml"))
    gpu = parse_job(job_doc("g", config="c.yaml", gpusPerNode=8))
    mine = parse_job(job_doc("m", config="c.yaml", image="razor-trainer:0.1.0"))   # a CPU job may ask
    assert (cpu.spec.image, gpu.spec.image, mine.spec.image) == (DEFAULT_CPU_IMAGE, DEFAULT_IMAGE, DEFAULT_IMAGE)
    # The filled-in image is still "left out": razorctl leaves it to the cluster; a chosen one is sent.
    assert "image" not in cpu.to_dict(cluster_defaults=True)["spec"]
    assert mine.to_dict(cluster_defaults=True)["spec"]["image"] == DEFAULT_IMAGE
    # The filled-in document is the same job again.
    assert parse_job(cpu.to_dict()) == cpu


GPU_IMAGE, CPU_IMAGE = "registry.local/razor-trainer:2", "registry.local/razor-trainer:2-cpu"


@pytest.mark.parametrize("defaults, gpus, image", [
    ({"image": GPU_IMAGE, "cpuImage": CPU_IMAGE}, 0, CPU_IMAGE),
    ({"image": GPU_IMAGE, "cpuImage": CPU_IMAGE}, 8, GPU_IMAGE),
    ({"image": GPU_IMAGE}, 0, GPU_IMAGE),          # no cpuImage: the cluster's one image for all
    ({"image": GPU_IMAGE}, 8, GPU_IMAGE),
    ({"cpuImage": CPU_IMAGE}, 0, CPU_IMAGE),
    ({"cpuImage": CPU_IMAGE}, 8, DEFAULT_IMAGE),    # no image: razor's own for GPU jobs
    ({}, 0, DEFAULT_CPU_IMAGE),
    ({}, 8, DEFAULT_IMAGE),
])
def test_the_clusters_image_and_cpu_image(defaults, gpus, image):
    doc = job_doc("j", config="c.yaml", gpusPerNode=gpus)
    assert parse_job(with_cluster_defaults(doc, parse_cluster_defaults(defaults))).spec.image == image
    # A job that names its image keeps it.
    doc["spec"]["image"] = "mine:1"
    assert parse_job(with_cluster_defaults(doc, parse_cluster_defaults(defaults))).spec.image == "mine:1"


QUALIFIED = ["registry.example.com:5000/team/razor-trainer:0.1.0-cpu",
             "registry.example.com:5000/team/razor-trainer@sha256:" + "0123456789abcdef" * 4,
             "registry.example.com:5000/team/razor-trainer:0.1.0@sha256:" + "fedcba9876543210" * 4,
             "localhost/razor-trainer:test-cpu", "ghcr.io/org/razor-trainer"]


@pytest.mark.parametrize("image", QUALIFIED)
def test_qualified_image_names_are_accepted_everywhere(image: str):
    assert parse_job(job_doc("q", config="c.yaml", image=image)).spec.image == image
    defaults = parse_cluster_defaults({"image": image, "cpuImage": image})
    assert parse_job(with_cluster_defaults(job_doc("q", config="c.yaml"), defaults)).spec.image == image
    # The API server's check of spec.image (the CRD's pattern) lets it through too.
    pattern = crd.spec_schema()["properties"]["image"]["pattern"]
    assert re.fullmatch(pattern, image)


# ---- terminationGracePeriodSeconds, the launcher contract's reserved names -------------------------


def test_termination_grace_is_a_whole_number_of_at_least_one_second():
    assert parse_job(job_doc("t", config="c.yaml")).spec.termination_grace_period_seconds == 120
    assert parse_job(job_doc("t", config="c.yaml", terminationGracePeriodSeconds=30)) \
        .spec.termination_grace_period_seconds == 30
    for bad, message in ((0, "must be greater than or equal to 1 (got 0)"), ("soon", "must be a whole number")):
        with pytest.raises(SpecError) as err:
            parse_job(job_doc("t", config="c.yaml", terminationGracePeriodSeconds=bad))
        assert f"spec.terminationGracePeriodSeconds: {message}" in str(err.value)
    defaults = parse_cluster_defaults({"terminationGracePeriodSeconds": 600})
    assert parse_job(with_cluster_defaults(job_doc("t", config="c.yaml"), defaults)) \
        .spec.termination_grace_period_seconds == 600


@pytest.mark.parametrize("name", ["PORT", "RAZOR_STOP_GRACE", "RAZOR_MASTER_ADDR_TIMEOUT"])
def test_the_contracts_variables_cannot_be_set_in_env(name: str):
    with pytest.raises(SpecError) as err:
        parse_job(job_doc("e", config="c.yaml", env={name: "1"}))
    assert f"spec.env: {name} is set by razor (the launcher contract) and cannot be overridden" in str(err.value)
    # The API server refuses it too (the CRD's CEL rule).
    rule = crd.spec_schema()["properties"]["env"]["x-kubernetes-validations"][1]["rule"]
    assert f"'{name}' in self" in rule
