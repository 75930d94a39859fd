"""The sbatch script of a RazorJob: pure, golden-file tested, and safe against hostile strings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import job_doc
from razor import slurm
from razor.backends.slurm import phase_of
from razor.config import format_value, parse_value
from razor.seedtools import job_from_seed
from razor.spec import SpecError, parse_job
from test_kube_render import check_golden

HOSTILE = ["$(touch {m})", "`touch {m}`", "; touch {m}", "' ; touch {m} ; '", "\" ; touch {m} ; \"",
           "&& touch {m}", "| touch {m}", "${{IFS}}touch${{IFS}}{m}"]


def gpu_job(**extra):
    return parse_job(job_doc(
        "kd", config="configs/kd.yaml", nnodes=2, gpusPerNode=8, workDir="/scratch/kd",
        cfgOptions={"optimizer.lr": 0.01}, env={"NCCL_IB_HCA": "mlx5"},
        slurm={"partition": "gpu", "cpusPerTask": 10, "time": "1-00:00:00", "account": "ml", "qos": "high",
               "srunArgs": ["--exclusive"]}, **extra))


def test_sbatch_golden():
    check_golden("slurm-kd-2x8.sbatch", slurm.render(gpu_job(), "/home/me/razor", "/opt/venv/bin/python"))


def test_directives():
    text = slurm.render(gpu_job(), "/home/me/razor")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --partition=gpu", "#SBATCH --time=1-00:00:00",
                 "#SBATCH --account=ml", "#SBATCH --qos=high", "#SBATCH --requeue", "#SBATCH --signal=USR2@120",
                 "#SBATCH --output=/scratch/kd/logs/%x-%j.out", "#SBATCH --error=/scratch/kd/logs/%x-%j.err"):
        assert line in text.splitlines()
    gres = parse_job(job_doc("g", config="c.yaml", gpusPerNode=4, slurm={"gres": True}))
    assert "#SBATCH --gres=gpu:4" in slurm.render(gres, "/x")
    cpu = parse_job(job_doc("c", config="c.yaml", nprocPerNode=2))
    text = slurm.render(cpu, "/x")
    assert "gpu" not in "".join(line for line in text.splitlines() if line.startswith("#SBATCH"))
    assert text.count("\nsrun ") == 1, "one srun, one task per node; torchrun runs inside it once"
    assert "MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))" in slurm.render(
        parse_job(job_doc("a", config="c.yaml", port="auto")), "/x")
    assert "MASTER_PORT=29600" in slurm.render(parse_job(job_doc("f", config="c.yaml", port=29600)), "/x")


def test_the_script_is_valid_bash():
    res = subprocess.run(["bash", "-n"], input=slurm.render(gpu_job(), "/x"), text=True, capture_output=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_strings_are_inert(tmp_path: Path, pattern: str):
    """Render a job whose every free-text field is hostile, run the script's body with stub
    srun/scontrol, and check that nothing ran: the marker file never appears."""
    marker = tmp_path / "pwned"
    evil = pattern.format(m=marker)
    job = parse_job(job_doc(
        "evil", config=f"cfg{evil}.yaml", workDir=str(tmp_path / "wd"), env={"EVIL": evil},
        cfgOptions={"name": evil, "model.note": [evil]}, resume=f"ck{evil}.pth",
        slurm={"srunArgs": [evil, f"--comment={evil}"]}))
    script = slurm.render(job, str(tmp_path), python=f"py{evil}")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in (("srun", 'printf "%s\\n" "$@" > "$ARGS_OUT"'), ("scontrol", "echo node0")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node0", "SLURM_JOB_ID": "42",
           "ARGS_OUT": str(tmp_path / "args")}
    res = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not marker.exists(), f"{evil!r} ran"
    args = (tmp_path / "args").read_text().splitlines()
    assert evil in args and f"--comment={evil}" in args  # each reached srun as one word, unchanged
    assert f"name={format_value(evil)}" in args and parse_value(format_value(evil)) == evil


@pytest.mark.parametrize("field, value", [
    ("slurm", {"partition": "debug;touch /tmp/x"}), ("slurm", {"jobName": "a b"}),
    ("slurm", {"account": "$(id)"}), ("slurm", {"qos": "`id`"}), ("slurm", {"time": "1;id"}),
    ("workDir", "/tmp/a\nb"), ("config", "x\ny.yaml"),
])
def test_values_that_cannot_be_passed_safely_are_refused(field, value):
    with pytest.raises(SpecError) as err:
        parse_job(job_doc("x", **{"config": "c.yaml", field: value}))
    assert f"spec.{field}" in str(err.value)


def test_a_work_dir_with_spaces_cannot_be_an_sbatch_directive():
    job = parse_job(job_doc("x", config="c.yaml", workDir="/tmp/a b"))
    with pytest.raises(slurm.UnsafeValue, match="spec.workDir"):
        slurm.render(job, "/x")


@pytest.mark.parametrize("state, phase", [
    ("PENDING", "Pending"), ("REQUEUED", "Pending"), ("PREEMPTED", "Pending"), ("RUNNING", "Running"),
    ("COMPLETED", "Succeeded"), ("FAILED", "Failed"), ("TIMEOUT", "Failed"), ("OUT_OF_MEMORY", "Failed"),
    ("NODE_FAIL", "Failed"), ("CANCELLED by 0", "Cancelled"), ("CANCELLED+", "Cancelled"),
])
def test_states(state, phase):
    assert phase_of(state) == phase


def test_seed_wrapper_arguments():
    doc = job_from_seed(["debug", "Razor_KD", "trainer/configs/digits_kd.yaml", "wd", "--cfg-options",
                         "dist_params.port=29501", "optimizer.lr=0.1"],
                        {"GPUS": "16", "GPUS_PER_NODE": "8", "CPUS_PER_TASK": "4", "SRUN_ARGS": "--exclusive -x n1"})
    job = parse_job(doc)
    assert (job.name, job.spec.slurm.job_name) == ("razor-kd", "Razor_KD")
    assert (job.spec.nnodes, job.spec.gpus_per_node, job.spec.nproc_per_node) == (2, 8, 8)
    assert job.spec.slurm.srun_args == ["--exclusive", "-x", "n1"] and job.spec.slurm.cpus_per_task == 4
    assert job.spec.cfg_options == {"dist_params.port": 29501, "optimizer.lr": 0.1}
    assert "MASTER_PORT=29501" in slurm.render(job, "/x")  # the seed's Option 2
    cpu = parse_job(job_from_seed(["debug", "j", "c.yaml", "wd"], {"GPUS": "2", "GPUS_PER_NODE": "0"}))
    assert (cpu.spec.nnodes, cpu.spec.gpus_per_node, cpu.spec.nproc_per_node) == (1, 0, 2)


def test_every_task_gets_port_beside_master_port_and_the_stop_grace(tmp_path: Path):
    """The script run with stub srun/scontrol: the environment srun hands each task carries PORT,
    equal to the MASTER_PORT derived at run time, and RAZOR_STOP_GRACE from the job's grace."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in (("srun", 'env > "$ENV_OUT"'), ("scontrol", "echo node0")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    for spec, port in (({}, str(20000 + 4242 % 20000)), ({"port": 29600}, "29600")):
        job = parse_job(job_doc("p", config="c.yaml", workDir=str(tmp_path / "wd"),
                                terminationGracePeriodSeconds=60, **spec))
        env = {"PATH": f"{stubs}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node0", "SLURM_JOB_ID": "4242",
               "ENV_OUT": str(tmp_path / "env")}
        res = subprocess.run(["bash", "-c", slurm.render(job, str(tmp_path))], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
        assert seen["PORT"] == seen["MASTER_PORT"] == seen["PET_MASTER_PORT"] == port
        assert seen["RAZOR_STOP_GRACE"] == "50"


@pytest.mark.parametrize("grace", [30, 120, 600, 65535])
def test_usr2_comes_the_jobs_grace_before_the_time_limit(grace: int):
    """SLURM's USR2 must leave the nodes their whole grace (razor.node's RAZOR_STOP_GRACE, 10 s
    less, then the requeue) before the time limit's SIGTERM and, KillWait later, SIGKILL."""
    job = parse_job(job_doc("g", config="c.yaml", terminationGracePeriodSeconds=grace,
                            slurm={"time": "2-00:00:00"}))
    lines = slurm.render(job, "/x").splitlines()
    assert [line for line in lines if line.startswith("#SBATCH --signal")] == [f"#SBATCH --signal=USR2@{grace}"]
    assert f"export RAZOR_STOP_GRACE={max(1, grace - 10)}" in lines


@pytest.mark.parametrize("spec, field, message", [
    ({"terminationGracePeriodSeconds": 65536}, "spec.terminationGracePeriodSeconds",
     "SLURM can signal a job at most 65535 s before its time limit"),
    ({"slurm": {"time": "2"}}, "spec.slurm.time",
     "the time limit (2, 120 s) must be longer than spec.terminationGracePeriodSeconds (120 s)"),
    ({"terminationGracePeriodSeconds": 600, "slurm": {"time": "0:09:59"}}, "spec.slurm.time",
     "(0:09:59, 599 s) must be longer than spec.terminationGracePeriodSeconds (600 s)"),
])
def test_a_grace_slurm_cannot_give_is_refused(spec: dict, field: str, message: str):
    with pytest.raises(SpecError) as err:
        slurm.render(parse_job(job_doc("g", config="c.yaml", **spec)), "/x")
    assert f"{field}: " in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("limit, seconds", [
    ("30", 1800), ("30:15", 1815), ("1:30:00", 5400), ("1-5", 104400), ("1-5:30", 106200),
    ("1-05:30:10", 106210), ("UNLIMITED", None), ("INFINITE", None), ("0", None),
])
def test_time_limits_in_seconds(limit: str, seconds: int | None):
    assert slurm.time_limit_seconds(limit) == seconds
    if seconds and seconds > 120:
        job = parse_job(job_doc("t", config="c.yaml", slurm={"time": limit}))
        assert "#SBATCH --signal=USR2@120" in slurm.render(job, "/x").splitlines()
