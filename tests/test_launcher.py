"""The launcher contract and the local plan: pure functions, exact expectations."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, job_doc
from razor import launcher, slurm
from razor.backends import local
from razor.launcher import CONTRACT, RESERVED_ENV, WORKER_ENV, Network, job_port, node_env, node_launches, \
    trainer_args
from razor.spec import SpecError, parse_job

#: What docs/launcher-contract.md promises every node, written out here as the reader sees it.
PROMISED = {"MASTER_ADDR", "MASTER_PORT", "PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "GPUS_PER_NODE",
            "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR", "PET_MASTER_PORT",
            "RAZOR_JOB_NAME", "RAZOR_WORK_DIR", "RAZOR_ATTEMPT", "RAZOR_MASTER_ADDR_TIMEOUT", "RAZOR_STOP_GRACE"}


def test_node_env_is_the_contract():
    job = parse_job(job_doc("kd", config="c.yaml", nnodes=4, gpusPerNode=8, env={"NCCL_DEBUG": "INFO"}))
    env = node_env(job, 2, "kd-0.kd.default.svc", 29500, attempt=3)
    assert PROMISED <= set(env)
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "kd-0.kd.default.svc"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == env["PORT"] == "29500"
    assert env["RAZOR_STOP_GRACE"] == "110"  # within the default terminationGracePeriodSeconds, 120
    assert env["NNODES"] == env["PET_NNODES"] == "4"
    assert env["NODE_RANK"] == env["PET_NODE_RANK"] == "2"
    assert env["NPROC_PER_NODE"] == env["PET_NPROC_PER_NODE"] == "8"
    assert env["GPUS_PER_NODE"] == "8"
    assert (env["RAZOR_JOB_NAME"], env["RAZOR_WORK_DIR"], env["RAZOR_ATTEMPT"]) == ("kd", "work_dirs/c", "3")
    assert env["NCCL_DEBUG"] == "INFO"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_cpu_jobs_hide_gpus_like_the_seed():
    job = parse_job(job_doc("cpu", config="c.yaml"))
    assert node_env(job, 0, "127.0.0.1", 1234)["CUDA_VISIBLE_DEVICES"] == "-1"


def test_trainer_args():
    job = parse_job(job_doc("kd", config="configs/kd.yaml", workDir="out", resume="never",
                            autoScaleLR={"baseGPUs": 4},
                            cfgOptions={"optimizer.lr": 0.01, "model.hidden": [64, 32], "name": "a b"}))
    assert trainer_args(job) == [
        "-m", "razor_trainer", "configs/kd.yaml", "--launcher", "pytorch", "--work-dir", "out",
        "--resume", "never", "--base-gpus", "4", "--cfg-options",
        "optimizer.lr=0.01", "model.hidden=[64,32]", "name=a b"]
    off = parse_job(job_doc("kd", config="c.yaml", autoScaleLR=False))
    assert "--no-auto-scale-lr" in trainer_args(off)


def test_user_script_args():
    job = parse_job(job_doc("mine", script="train_mine.py", args=["--epochs", "3"]))
    assert trainer_args(job) == ["train_mine.py", "--epochs", "3"]


def test_port_precedence():
    def port(job, config=None):
        return job_port(job, config, Network.MACHINE).port

    cfg_fixed = {"dist_params": {"port": 29600}}
    default = parse_job(job_doc("p", config="c.yaml"))
    assert port(default) == 29500
    assert port(default, cfg_fixed) == 29600                            # seed's Option 1
    opt = parse_job(job_doc("p", config="c.yaml", cfgOptions={"dist_params.port": 29501}))
    assert port(opt, cfg_fixed) == 29501                                # seed's Option 2
    explicit = parse_job(job_doc("p", config="c.yaml", port=29700))
    assert port(explicit, cfg_fixed) == 29700
    assert port(parse_job(job_doc("p", config="c.yaml", port="auto")), cfg_fixed) is None


CFG = {"dist_params": {"port": 29600}}


@pytest.mark.parametrize("spec, config, network, allocated, want", [
    # The port the job fixes, on every backend that is not hostNetwork.
    ({"port": 29700}, CFG, Network.OWN, None, (29700, "fixed", "spec.port")),
    ({"port": 29700}, CFG, Network.MACHINE, None, (29700, "fixed", "spec.port")),
    ({"port": 29700}, CFG, Network.DERIVED, None, (29700, "fixed", "spec.port")),
    ({"cfgOptions": {"dist_params.port": 29501}}, CFG, Network.DERIVED, None,
     (29501, "fixed", "spec.cfgOptions.dist_params.port")),
    ({}, CFG, Network.OWN, None, (29600, "fixed", "spec.config (dist_params.port)")),
    ({}, CFG, Network.MACHINE, None, (29600, "fixed", "spec.config (dist_params.port)")),
    ({}, CFG, Network.DERIVED, None, (29600, "fixed", "spec.config (dist_params.port)")),
    # 'auto' wins over the config's port.
    ({"port": "auto"}, CFG, Network.MACHINE, None, (None, "auto", "spec.port")),
    # Fixed by nothing: by where the node listens.
    ({}, None, Network.OWN, None, (29500, "default", "spec.port")),
    ({"port": "auto"}, None, Network.OWN, None, (29500, "default", "spec.port")),
    ({}, None, Network.MACHINE, None, (29500, "default", "spec.port")),
    ({"port": "auto"}, None, Network.MACHINE, None, (None, "auto", "spec.port")),
    ({}, None, Network.DERIVED, None, (None, "derived", "spec.port")),
    ({"port": "auto"}, None, Network.DERIVED, None, (None, "derived", "spec.port")),
    # hostNetwork: the operator's allocation, whatever the job says.
    ({}, None, Network.ALLOCATED, 30123, (30123, "allocated", "")),
    ({"port": 29700}, CFG, Network.ALLOCATED, 30123, (30123, "allocated", "")),
    ({}, None, Network.ALLOCATED, None, (None, "allocated", "")),
])
def test_one_port_rule(spec, config, network, allocated, want):
    choice = job_port(parse_job(job_doc("p", config="c.yaml", **spec)), config, network, allocated)
    assert (choice.port, choice.how, choice.field) == want


def test_every_backend_takes_the_port_the_config_fixes(tmp_path: Path, monkeypatch, capsys):
    """dist_params.port in the config (the seed's Option 1) fixes the port locally, on SLURM and on
    Kubernetes alike: razorctl reads the config and sends its port as spec.port, since the
    operator cannot read a config that is in the image."""
    from razor import cli

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"dist_params": {"port": 29611}, "schedule": {"epochs": 1}}))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_doc("p", config="c.yaml", nnodes=2)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["render", "--local", str(path), "-o", "json"]) == 0
    assert __import__("json").loads(capsys.readouterr().out)["port"] == 29611
    assert cli.main(["render", "--slurm", str(path)]) == 0
    assert "MASTER_PORT=29611" in capsys.readouterr().out.splitlines()
    assert cli.main(["render", str(path), "--kubeconfig", str(tmp_path / "no-kubeconfig")]) == 0
    _, *pods = yaml.safe_load_all(capsys.readouterr().out)
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["MASTER_PORT"] == env["PORT"] == "29611"


def test_a_bad_port_in_the_config_is_refused_naming_the_field():
    with pytest.raises(SpecError) as err:
        job_port(parse_job(job_doc("p", config="c.yaml")), {"dist_params": {"port": "x"}}, Network.MACHINE)
    assert "spec.config: dist_params.port must be a port number (got 'x')" in str(err.value)


def test_a_busy_port_is_refused_naming_the_field_that_fixed_it(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        job = parse_job(job_doc("p", config="c.yaml", cfgOptions={"dist_params.port": port}))
        with pytest.raises(local.PortInUse, match=f"^spec.cfgOptions.dist_params.port: port {port} on this machine"):
            local.choose_port(job, None)
        with pytest.raises(local.PortInUse, match=r"^spec.config \(dist_params.port\): port"):
            local.choose_port(parse_job(job_doc("p", config="c.yaml")), {"dist_params": {"port": port}})


# ----------------------------------------------------------------------------- one contract


def test_the_contract_has_one_definition():
    import razor.spec

    names = [v.name for v in CONTRACT]
    assert len(names) == len(set(names))
    assert razor.spec.CONTRACT_ENV is RESERVED_ENV
    assert RESERVED_ENV == {n for n in names if n != "CUDA_VISIBLE_DEVICES"} | set(WORKER_ENV)
    cpu = parse_job(job_doc("c", config="c.yaml", nnodes=2, env={"A": "1"}))
    gpu = parse_job(job_doc("g", config="c.yaml", gpusPerNode=2))
    unset = {"RAZOR_PROGRESS_TIMEOUT"}  # the spec's progressTimeoutSeconds is off by default
    assert list(node_env(cpu, 1, "h", 1234, 2)) == [*(n for n in names if n not in unset), "A"]  # CONTRACT's order
    assert list(node_env(gpu, 0, "h", 1234)) == [n for n in names if n not in unset | {"CUDA_VISIBLE_DEVICES"}]
    timed = parse_job(job_doc("t", config="c.yaml", progressTimeoutSeconds=600))
    assert list(node_env(timed, 0, "h", 1234)) == names  # a CPU job: every variable
    assert node_env(timed, 0, "h", 1234)["RAZOR_PROGRESS_TIMEOUT"] == "600"
    assert launcher.DEFAULT_TERMINATION_GRACE == razor.spec.DEFAULT_TERMINATION_GRACE
    assert razor.spec.RazorJobSpec.model_fields["port"].default == launcher.DEFAULT_PORT == 29500


@pytest.mark.parametrize("name", [v.name for v in CONTRACT] + list(WORKER_ENV))
@pytest.mark.parametrize("gpus", [0, 2])
def test_spec_env_cannot_set_any_of_the_contract(name: str, gpus: int):
    doc = job_doc("e", config="c.yaml", gpusPerNode=gpus, env={name: "1"})
    if name == "CUDA_VISIBLE_DEVICES" and gpus:
        assert parse_job(doc).spec.env == {name: "1"}  # a job with GPUs may choose them
        return
    with pytest.raises(SpecError) as err:
        parse_job(doc)
    assert f"spec.env: {name} is set by razor" in str(err.value)
    assert "cannot be overridden" in str(err.value)


def test_razor_node_reads_the_contract_every_backend_writes():
    from razor.node import contract

    job = parse_job(job_doc("n", config="c.yaml", nnodes=3, nprocPerNode=1))
    env = node_env(job, 2, "n-0.n.ml.svc", 29511, 4)
    assert contract(env) == {"NNODES": "3", "NODE_RANK": "2", "NPROC_PER_NODE": "1",
                             "MASTER_ADDR": "n-0.n.ml.svc", "MASTER_PORT": "29511"}


def test_the_docs_show_the_contract_as_it_is_defined():
    text = (ROOT / "docs" / "launcher-contract.md").read_text()
    assert launcher.contract_table() in text, "docs/launcher-contract.md: paste `python -m razor.launcher`"
    for name in WORKER_ENV:
        assert f"`{name}`" in text, name


def test_the_sbatch_script_sets_the_contract_from_the_one_definition():
    job = parse_job(job_doc("s", config="c.yaml", nnodes=2, workDir="/w", progressTimeoutSeconds=900))
    text = slurm.render(job, "/x")
    for var in CONTRACT:
        if var.fact is None:  # the job's: exported as it is
            assert f"export {var.name}={shlex.quote(var.value(launcher.JobFacts.of(job), None))}" in text
        else:  # the run's: computed by the script (the node's rank by each task)
            assert f"{var.name}=$" in text or f"export {var.name} " in text, var.name


def test_every_node_runs_razor_node_once():
    job = parse_job(job_doc("two", config="c.yaml", nnodes=2))
    launches = node_launches(job, "127.0.0.1", 29500, python="/py")
    assert [n.rank for n in launches] == [0, 1]
    assert all(n.argv[:3] == ["/py", "-m", "razor.node"] for n in launches)
    assert all("torchrun" not in " ".join(n.argv) for n in launches)  # razor.node runs it, once


def test_local_plan_and_render(tmp_path: Path):
    job = parse_job(job_doc("two", config="c.yaml", nnodes=2, cfgOptions={"name": "it's"}))
    plan = local.plan(job, tmp_path, 29555, python="/py", cpus=4)
    assert [n.env["NODE_RANK"] for n in plan.nodes] == ["0", "1"]
    assert all(n.env["MASTER_ADDR"] == "127.0.0.1" and n.env["MASTER_PORT"] == n.env["PORT"] == "29555"
               for n in plan.nodes)
    assert all(n.env["OMP_NUM_THREADS"] == "2" for n in plan.nodes)
    text = local.render(plan)
    assert text.startswith("#!/bin/sh\n") and text.rstrip().endswith("wait")
    assert "rendezvous 127.0.0.1:29555" in text
    # The rendered script is valid shell and carries every argument back unchanged.
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.startswith("env ")]
    words = shlex.split(lines[1].removesuffix("&"))
    assert "NODE_RANK=1" in words and words[words.index("/py"):] == plan.nodes[1].argv
    assert "PORT=29555" in words and "RAZOR_STOP_GRACE=110" in words
    doc = __import__("json").loads(local.render(plan, "json"))
    assert doc["nodes"][1]["env"]["NODE_RANK"] == "1" and doc["port"] == 29555


def test_stop_grace_is_the_jobs_grace_less_a_margin():
    for grace, stop in ((120, "110"), (300, "290"), (11, "1"), (10, "1"), (1, "1")):
        job = parse_job(job_doc("g", config="c.yaml", terminationGracePeriodSeconds=grace))
        assert node_env(job, 0, "127.0.0.1", 29500)["RAZOR_STOP_GRACE"] == stop
