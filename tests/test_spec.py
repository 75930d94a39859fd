"""The RazorJob spec: defaults filled in one place, every error found and named by its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, job_doc, razorctl
from razor.spec import (CLUSTER_DEFAULTS, DEFAULT_IMAGE, SpecError, load_job, parse_cluster_defaults, parse_job,
                        with_cluster_defaults)

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
    assert parse_job(with_cluster_defaults(job_doc("c", config="c.yaml"), {})).spec.image == DEFAULT_IMAGE


def test_razorctl_leaves_the_cluster_defaults_to_the_cluster():
    job = parse_job(job_doc("a", config="c.yaml", backoffLimit=5, port="auto"))
    sent = job.to_dict(cluster_defaults=True)["spec"]
    assert sent["backoffLimit"] == 5 and sent["port"] == "auto" and sent["nnodes"] == 1
    assert not {"image", "masterAddrTimeoutSeconds", "permanentExitCodes"} & set(sent)
    assert job.to_dict()["spec"]["image"] == DEFAULT_IMAGE  # razorctl validate/render show them all


@pytest.mark.parametrize("doc, message", [
    ({"imag": "x"}, "defaults.imag: is not a field a cluster can default (did you mean 'image'?"),
    ({"nnodes": 2}, "defaults.nnodes: is not a field a cluster can default"),
    ({"backoffLimit": -1}, "defaults.backoffLimit: must be greater than or equal to 0 (got -1)"),
    ({"image": "a b"}, "defaults.image: 'a b' is not an image reference"),
    ({"port": 80}, "defaults.port:"),
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
