"""The launcher contract and the local plan: pure functions, exact expectations."""

from __future__ import annotations

import shlex
from pathlib import Path

from conftest import job_doc
from razor.backends import local
from razor.launcher import fixed_port, node_env, node_launches, trainer_args
from razor.spec import parse_job

CONTRACT = {"MASTER_ADDR", "MASTER_PORT", "PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "GPUS_PER_NODE",
            "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR", "PET_MASTER_PORT",
            "RAZOR_JOB_NAME", "RAZOR_WORK_DIR", "RAZOR_ATTEMPT", "RAZOR_MASTER_ADDR_TIMEOUT", "RAZOR_STOP_GRACE"}


def test_node_env_is_the_contract():
    job = parse_job(job_doc("kd", config="c.yaml", nnodes=4, gpusPerNode=8, env={"NCCL_DEBUG": "INFO"}))
    env = node_env(job, 2, "kd-0.kd.default.svc", 29500, attempt=3)
    assert CONTRACT <= set(env)
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
    cfg_fixed = {"dist_params": {"port": 29600}}
    default = parse_job(job_doc("p", config="c.yaml"))
    assert fixed_port(default) == 29500
    assert fixed_port(default, cfg_fixed) == 29600                      # seed's Option 1
    opt = parse_job(job_doc("p", config="c.yaml", cfgOptions={"dist_params.port": 29501}))
    assert fixed_port(opt, cfg_fixed) == 29501                          # seed's Option 2
    explicit = parse_job(job_doc("p", config="c.yaml", port=29700))
    assert fixed_port(explicit, cfg_fixed) == 29700
    assert fixed_port(parse_job(job_doc("p", config="c.yaml", port="auto")), cfg_fixed) is None


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
