"""The sbatch script of a RazorJob: pure, golden-file tested, and safe against hostile strings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, job_doc
from razor import slurm
from razor.backends.slurm import phase_of
from razor.backends.slurm_job import TaskEnd, failed_ranks, srun_report
from razor.backends.slurm_records import CommentState, counters, parse_comment, record_fields
from razor.config import format_value, parse_value
from razor.policy import FailureClass, Phase, Policy, Restarts, on_failure
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


@pytest.mark.parametrize("state, restarts, phase", [
    ("PENDING", 0, "Pending"), ("PENDING", 1, "Restarting"), ("REQUEUED", 1, "Restarting"),
    ("PREEMPTED", 0, "Restarting"), ("REQUEUE_HOLD", 2, "Restarting"), ("RUNNING", 0, "Running"),
    ("RUNNING", 3, "Running"), ("COMPLETED", 0, "Succeeded"), ("FAILED", 0, "Failed"), ("TIMEOUT", 0, "Failed"),
    ("OUT_OF_MEMORY", 0, "Failed"), ("NODE_FAIL", 0, "Failed"), ("CANCELLED by 0", 0, "Failed"),
    ("CANCELLED+", 0, "Failed"), ("SUSPENDED", 0, "Suspended"),
])
def test_states_are_razors_phases(state, restarts, phase):
    """The words of razor.policy.Phase on every backend: a job that waits to run again is
    Restarting; a cancelled one is Failed (its SLURM state says CANCELLED)."""
    assert phase_of(state, restarts) == phase
    assert phase in {p.value for p in Phase}


def test_the_comment_keeps_the_counters_slurm_does_not():
    c = CommentState("Restarting", 3, 1, 1, "rank 1 (node2) exited with code 124; x=y")
    assert "=" not in c.text(), "scontrol show job -o would read key= as a field of its own"
    back = parse_comment(c.text())
    assert (back.phase, back.attempt, back.counted, back.retryable) == ("Restarting", 3, 1, 1)
    assert back.message == "rank 1 (node2) exited with code 124; x:y"
    # 4 restarts in all: 1 counted, 1 after a retryable code, the other 2 were disruptions.
    assert counters(4, c.text()) == Restarts(4, 1, 2)
    assert counters(2, "a comment of the user's") == Restarts(2, 0, 2)
    assert counters(0, None) == Restarts()
    fields = record_fields(f"JobId=7 JobState=PENDING Restarts=1 Comment={c.text()} StdErr=/x/e StdOut=/x/o")
    assert fields["Comment"] == c.text() and fields["StdOut"] == "/x/o" and fields["Restarts"] == "1"


SRUN_2_NODES = """\
srun: error: node2: task 1: Exited with exit code 3
srun: launch/slurm: _step_signal: Terminating StepId=11.0
slurmstepd-node1: error: *** STEP 11.0 ON node1 CANCELLED AT 2026-12-01T04:17:50 ***
srun: error: node1: task 0: Exited with exit code 75
"""


def test_srun_report_tells_the_failure_from_what_srun_stopped_after_it():
    """srun's exit code is the highest of its tasks': 75 here, from rank 0 that srun itself
    stopped (--kill-on-bad-exit) after rank 1 failed with 3. The failure is rank 1's."""
    before, after = srun_report(SRUN_2_NODES)
    assert before == [TaskEnd(1, "node2", 3)]
    assert after == [TaskEnd(0, "node1", 75)]
    before, _ = srun_report("srun: error: vm: tasks 0-1: Killed\nsrun: error: n3: task 2: Segmentation fault "
                            "(core dumped)\nsrun: error: Node failure on n4\n")
    assert before == [TaskEnd(0, "vm", 137, "SIGKILL"), TaskEnd(1, "vm", 137, "SIGKILL"),
                      TaskEnd(2, "n3", 139, "SIGSEGV"), TaskEnd(-1, "n4", None, "NodeFailure")]


def test_the_policy_decides_from_srun_report():
    """The same verdicts as on Kubernetes: rank 1's failure, counted (not rank 0's follow-on 75);
    a rank whose node is down now was lost with it (a disruption, not counted)."""
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    before, _ = srun_report(SRUN_2_NODES)
    outcomes = failed_ranks(before, 75, {"node2": ("IDLE", "")}, ["node1", "node2"], now)
    v = on_failure(Policy(), outcomes, Restarts(), 1, 2)
    assert v.failure_class is FailureClass.FAILURE and v.restarts == Restarts(1, 1, 0)
    assert v.message == ("rank 1 (node2) exited with code 3; restarting all 2 rank(s) as attempt 2 in 10s "
                         "(restart 1 of 3)")
    outcomes = failed_ranks(before, 75, {"node2": ("DOWN+NOT_RESPONDING", "Not responding")}, ["node1", "node2"], now)
    v = on_failure(Policy(backoff_limit=0), outcomes, Restarts(), 1, 2)
    assert v.failure_class is FailureClass.DISRUPTION and v.delay == 0 and v.restarts == Restarts(1, 0, 1)
    assert v.message.startswith("rank 1 (node2) lost with node node2: node node2 is DOWN+NOT_RESPONDING "
                                "(Not responding); restarting all 2 rank(s) as attempt 2 (a disruption")
    outcomes = failed_ranks([], 1, {}, [], now)
    assert outcomes[0].detail == "srun named no task that failed" and outcomes[0].exit_code == 1


def test_the_script_runs_the_policy_only_when_srun_failed(tmp_path: Path):
    """The script with stub srun/scontrol and a stub python that records its arguments."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text('#!/bin/sh\necho "srun: error: vm: task 0: Exited with exit code 3" >&2\n'
                                'exit "$SRUN_CODE"\n')
    (stubs / "scontrol").write_text("#!/bin/sh\necho node0\n")
    (stubs / "py").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "$ARGS_OUT"\n'
                              'while [ "$1" != --srun-log ]; do shift; done; cat "$2" > "$ARGS_OUT.log"\nexit 9\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    job = parse_job(job_doc("p", config="c.yaml", workDir=str(tmp_path / "wd"), nnodes=2, backoffLimit=4,
                            retryableExitCodes=[124, 3], restartBackoffSeconds=5))
    script = slurm.render(job, str(tmp_path), python=str(stubs / "py"))
    for code, want in ((0, 0), (1, 9)):
        env = {"PATH": f"{stubs}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node0", "SLURM_JOB_ID": "42",
               "ARGS_OUT": str(tmp_path / "args"), "SRUN_CODE": str(code)}
        res = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == want, res.stderr
        assert "srun: error: vm: task 0: Exited with exit code 3" in res.stderr  # kept in the .err log
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["-m", "razor.backends.slurm_job", "after-srun"]
    assert {"--nnodes=2", "--backoff-limit=4", "--permanent-exit-codes=2,126,127", "--retryable-exit-codes=3,124",
            "--restart-backoff-seconds=5", "--restart-backoff-max-seconds=360"} <= set(args)
    assert args[args.index("--exit-code") + 1] == "1"
    assert (tmp_path / "args.log").read_text() == "srun: error: vm: task 0: Exited with exit code 3\n"
    assert not list(tmp_path.glob("razor-srun-*")), "srun's report is removed"


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


# ---- slurm.setup, slurm.python, allocation options, sbatchArgs ---------------------------------------

def stub_bin(tmp_path: Path, srun_body: str = 'env > "$ENV_OUT"; printf "%s\\n" "$@" > "$ARGS_OUT"') -> Path:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, body in (("srun", srun_body), ("scontrol", "echo node0")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    return stubs


def run_script(tmp_path: Path, script: str, **extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node0", "SLURM_JOB_ID": "42",
           "ENV_OUT": str(tmp_path / "env"), "ARGS_OUT": str(tmp_path / "args"), **extra}
    return subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)


def test_allocation_options_and_sbatch_args_are_sbatch_lines():
    job = parse_job(job_doc("a", config="c.yaml", gpusPerNode=4, slurm={
        "mem": "64G", "constraint": "a100&[rack1|rack2]", "exclusive": True,
        "sbatchArgs": ["--mail-type=END", "--hold", "--mail-user=Ada Lovelace <ada@x.org>", "--gres=nvme:1"]}))
    lines = [line for line in slurm.render(job, "/x").splitlines() if line.startswith("#SBATCH")]
    for want in ("#SBATCH --mem=64G", "#SBATCH --constraint=a100&[rack1|rack2]", "#SBATCH --exclusive",
                 "#SBATCH --mail-type=END", "#SBATCH --hold", '#SBATCH --mail-user="Ada Lovelace <ada@x.org>"',
                 "#SBATCH --gres=nvme:1", "#SBATCH --gpus-per-node=4"):
        assert want in lines
    per_gpu = parse_job(job_doc("a", config="c.yaml", gpusPerNode=2, slurm={"memPerGpu": 16000}))
    assert "#SBATCH --mem-per-gpu=16000" in slurm.render(per_gpu, "/x").splitlines()


@pytest.mark.parametrize("value, word", [
    ("--hold", "--hold"), ("--x=plain", "--x=plain"), ("--x=a b", '--x="a b"'), ("--x=#1", '--x="#1"'),
    ('--x=say "hi"', '--x="say \\"hi\\""'), ("--x=a\\b", '--x="a\\\\b"'), ("--x=$(id)", "--x=$(id)"),
])
def test_sbatch_words_are_quoted_as_sbatch_reads_them(value: str, word: str):
    """sbatch's own parser (no shell): quotes group, a backslash escapes, an unquoted # starts a
    comment, and $ or backquotes mean nothing (tests/slurm checks a value's round trip)."""
    assert slurm.sbatch_word(value) == word


@pytest.mark.parametrize("slurm_spec, message", [
    ({"mem": "64 GB"}, "spec.slurm.mem: '64 GB' is not a SLURM memory size such as 64G"),
    ({"memPerGpu": "-1"}, "spec.slurm.memPerGpu: '-1' is not a SLURM memory size"),
    ({"mem": "1G", "memPerGpu": "1G"}, "spec.slurm: give one of slurm.mem, slurm.memPerGpu or --mem-per-cpu"),
    ({"mem": "1G", "sbatchArgs": ["--mem-per-cpu=1G"]}, "give one of slurm.mem, slurm.memPerGpu or --mem-per-cpu"),
    ({"constraint": "a100&"}, "spec.slurm.constraint: 'a100&' is not a SLURM feature expression"),
    ({"constraint": "[a|[b]]"}, "[ ] cannot be nested"),
    ({"constraint": "a b"}, "unexpected ' '"),
    ({"constraint": "a;id"}, "unexpected ';'"),
    ({"sbatchArgs": ["-N 2"]}, "spec.slurm.sbatchArgs: '-N 2' is not one long option"),
    ({"sbatchArgs": ["--hold --nodes=2"]}, "'--hold --nodes=2' is not one long option"),
    ({"sbatchArgs": ["--nodes=2"]}, "'--nodes=2' is refused: razor sets it from spec.nnodes"),
    ({"sbatchArgs": ["--ntasks-per-node=8"]}, "razor runs one task per node"),
    ({"sbatchArgs": ["--output=/tmp/x"]}, "razor writes the logs to <workDir>/logs/"),
    ({"sbatchArgs": ["--signal=USR1@60"]}, "razor sets it from spec.terminationGracePeriodSeconds"),
    ({"sbatchArgs": ["--job-name=x"]}, "razor sets it from slurm.jobName"),
    ({"sbatchArgs": ["--gpus-per-node=2"]}, "razor sets it from spec.gpusPerNode"),
    ({"sbatchArgs": ["--gres=gpu:a100:2"]}, "razor asks for the GPUs itself"),
    ({"sbatchArgs": ["--comment=mine"]}, "razor keeps the job's restart counters in its Comment"),
    ({"sbatchArgs": ["--export=NONE"]}, "the nodes need the environment the script exports"),
    ({"sbatchArgs": ["--array=0-3"]}, "use slurm.sweep"),
    ({"sbatchArgs": ["--node=3"]}, "'--node=3' is refused: sbatch may read it as --nodes (an abbreviation)"),
    ({"sbatchArgs": ["--mail-type=END\nid"]}, "must not contain newlines"),
    ({"setup": ["module load x\x00"]}, "spec.slurm.setup: item 0: must not contain NUL"),
    ({"python": " "}, "spec.slurm.python: must be a path or a command name"),
    ({"sweep": {"optimizer.lr": []}}, "spec.slurm.sweep: optimizer.lr: give at least one value"),
    ({"sweep": {"optimizer.lr": [0.1, 0.1]}}, "a value is given twice"),
    ({"sweep": {"a..b": [1]}}, "'a..b' is not a config key"),
    ({"sweep": {"dist_params.port": [29500, 29501]}}, "each element derives its own port"),
    ({"sweep": {"a": list(range(40)), "b": list(range(40))}}, "1600 elements; a job array has at most 1000"),
])
def test_bad_slurm_values_are_refused_naming_the_field(slurm_spec: dict, message: str):
    with pytest.raises(SpecError) as err:
        parse_job(job_doc("x", config="c.yaml", slurm=slurm_spec))
    assert message in str(err.value)


@pytest.mark.parametrize("expr", ["a100", "a100&ib", "a|b", "[rack1|rack2]", "(a|b)&c", "[r1*2&r2*4]", "gpu.v2:x+1"])
def test_feature_expressions_slurm_takes(expr: str):
    job = parse_job(job_doc("x", config="c.yaml", slurm={"constraint": expr}))
    assert f"#SBATCH --constraint={expr}" in slurm.render(job, "/x").splitlines()


def test_setup_runs_before_srun_and_the_nodes_inherit_what_it_makes(tmp_path: Path):
    stub_bin(tmp_path)
    job = parse_job(job_doc("s", config="c.yaml", workDir=str(tmp_path / "wd"), slurm={
        "setup": ["export FROM_SETUP=yes  # a comment", "if [ -n \"$NOT_SET_AT_ALL\" ]; then\n  exit 9\nfi",
                  "# only a comment", "export NNODES=99  # the contract is exported after setup"],
        "python": "python3"}))
    res = run_script(tmp_path, slurm.render(job, str(tmp_path), python="/not/used"))
    assert res.returncode == 0, res.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert env["FROM_SETUP"] == "yes" and env["NNODES"] == "1"
    args = (tmp_path / "args").read_text().splitlines()
    assert args[args.index("razor-node") + 1:][:3] == ["python3", "-m", "razor.node"]


def test_a_failing_setup_item_ends_the_job_before_srun(tmp_path: Path):
    stub_bin(tmp_path)
    job = parse_job(job_doc("s", config="c.yaml", workDir=str(tmp_path / "wd"),
                            slurm={"setup": ["true", "module load no-such-module"]}))
    res = run_script(tmp_path, slurm.render(job, str(tmp_path)))
    assert res.returncode == 127
    assert "razor: slurm.setup item 1 failed with exit code 127; the job does not start" in res.stderr
    assert not (tmp_path / "args").exists(), "srun must not run"


def test_render_and_submit_refuse_an_unsafe_value_with_exit_2_and_the_field(tmp_path: Path):
    """As a user sees it: razorctl in a subprocess, a $ in workDir, no traceback, nothing written."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc("j", config=str(ROOT / "trainer/configs/digits_mlp.yaml"),
                                          workDir="/tmp/$USER/wd")))
    for command in ("render", "submit"):
        res = subprocess.run([sys.executable, "-m", "razor.cli", command, "--slurm", str(job)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert "spec.workDir: '/tmp/$USER/wd/logs' cannot be passed to sbatch safely" in res.stderr
        assert "Traceback" not in res.stderr and res.stdout == ""
    assert list(tmp_path.iterdir()) == [job]


# ---- sweeps --------------------------------------------------------------------------------------

def sweep_job(tmp_path: Path | None = None, **extra):
    return parse_job(job_doc("kd", config="configs/kd.yaml", workDir="/scratch/kd", cfgOptions={"optimizer.lr": 1},
                             slurm={"sweep": {"optimizer.lr": [0.01, 0.1], "model.name": ["a/b", "c d"]}}, **extra))


def test_sweep_golden():
    job = parse_job(job_doc("kd", config="configs/kd.yaml", nnodes=2, gpusPerNode=8, workDir="/scratch/kd",
                            slurm={"partition": "gpu", "sweep": {"optimizer.lr": [0.01, 0.1]},
                                   "setup": ["module load cuda/12", "source /shared/venv/bin/activate"],
                                   "python": "python"}))
    check_golden("slurm-sweep-2x8.sbatch", slurm.render(job, "/home/me/razor", "/opt/venv/bin/python"))


def test_sweep_elements_are_the_grid_each_with_its_own_work_dir():
    elements = slurm.sweep_elements(sweep_job())
    assert [e.options for e in elements] == [
        {"optimizer.lr": 0.01, "model.name": "a/b"}, {"optimizer.lr": 0.01, "model.name": "c d"},
        {"optimizer.lr": 0.1, "model.name": "a/b"}, {"optimizer.lr": 0.1, "model.name": "c d"}]
    assert [e.work_dir for e in elements] == [
        "/scratch/kd/0-optimizer.lr=0.01,model.name=a_b", "/scratch/kd/1-optimizer.lr=0.01,model.name=c_d",
        "/scratch/kd/2-optimizer.lr=0.1,model.name=a_b", "/scratch/kd/3-optimizer.lr=0.1,model.name=c_d"]
    assert slurm.sweep_elements(parse_job(job_doc("x", config="c.yaml"))) == []


@pytest.mark.parametrize("index", [0, 3])
def test_an_element_runs_its_own_values_and_work_dir(tmp_path: Path, index: int):
    stub_bin(tmp_path)
    job = sweep_job()
    text = slurm.render(job, str(tmp_path))
    assert "#SBATCH --array=0-3" in text.splitlines()
    assert "#SBATCH --output=/scratch/kd/logs/%x-%A_%a.out" in text.splitlines()
    res = run_script(tmp_path, text.replace("mkdir -p /scratch/kd/logs", ":"), SLURM_ARRAY_TASK_ID=str(index))
    assert res.returncode == 0, res.stderr
    e = slurm.sweep_elements(job)[index]
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert env["RAZOR_WORK_DIR"] == e.work_dir and env["RAZOR_SWEEP_INDEX"] == str(index)
    assert json.loads(env["RAZOR_SWEEP"]) == e.options
    args = (tmp_path / "args").read_text().splitlines()
    assert "--output=/scratch/kd/logs/%x-%A_%a-node%n.out" in args
    assert args[args.index("--work-dir") + 1] == e.work_dir
    opts = args[args.index("--cfg-options") + 1:]
    assert opts == [f"optimizer.lr={e.options['optimizer.lr']}", f"model.name={format_value(e.options['model.name'])}"]
    assert f"razor: sweep element {index} of 4: " in res.stdout
    bad = run_script(tmp_path, text.replace("mkdir -p /scratch/kd/logs", ":"), SLURM_ARRAY_TASK_ID="4")
    assert bad.returncode == 2 and "razor: 4 is not an element of this sweep (0-3)" in bad.stderr


@pytest.mark.parametrize("pattern", HOSTILE)
def test_hostile_sweep_values_are_inert(tmp_path: Path, pattern: str):
    stub_bin(tmp_path)
    marker = tmp_path / "pwned"
    evil = pattern.format(m=marker)
    job = parse_job(job_doc("evil", config="c.yaml", workDir=str(tmp_path / "wd"),
                            slurm={"sweep": {"name": [evil, "ok"]}}))
    res = run_script(tmp_path, slurm.render(job, str(tmp_path)), SLURM_ARRAY_TASK_ID="0")
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    assert f"name={format_value(evil)}" in (tmp_path / "args").read_text().splitlines()


def test_a_sweep_refuses_a_fixed_port():
    for extra, field in (({"port": 29501}, "spec.port"),
                         ({"cfgOptions": {"dist_params.port": 29501}}, "spec.cfgOptions.dist_params.port")):
        job = parse_job(job_doc("s", config="c.yaml", slurm={"sweep": {"a": [1, 2]}}, **extra))
        with pytest.raises(SpecError, match=f"{re.escape(field)}: fixes port 29501, but a sweep's elements"):
            slurm.render(job, "/x")
    auto = parse_job(job_doc("s", config="c.yaml", port="auto", slurm={"sweep": {"a": [1, 2]}}))
    assert "MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))" in slurm.render(auto, "/x", config={
        "dist_params": {"port": 29501}})


def test_command_line_sweeps_merge_into_the_spec():
    job = parse_job(job_doc("s", config="c.yaml", slurm={"sweep": {"a": [1, 2], "b": ["x"]}}))
    merged = slurm.with_sweep(job, ["b=0.5,true,abc,1e-3", "c.d=3"])  # as --cfg-options values
    assert merged.spec.slurm.sweep == {"a": [1, 2], "b": [0.5, True, "abc", 0.001], "c.d": [3]}
    assert "port" not in merged.spec.model_fields_set, "a default stays a default"
    assert slurm.with_sweep(job, []) is job


@pytest.mark.parametrize("items, message", [
    (["lr"], "--sweep: 'lr' is not KEY=V1,V2,..."), (["lr="], "is not KEY=V1,V2"),
    (["lr=1,,2"], "--sweep: 'lr=1,,2': '' is not a value"), (["lr=1", "lr=2"], "--sweep: lr is given twice"),
    (["lr=1,null"], "'lr=1,null': 'null' is not a value"),
])
def test_bad_command_line_sweeps_name_the_option(items: list[str], message: str):
    job = parse_job(job_doc("s", config="c.yaml"))
    with pytest.raises(SpecError) as err:
        slurm.with_sweep(job, items)
    assert message in str(err.value)
    with pytest.raises(SpecError, match=r"spec.slurm.sweep: 'a\.\.b' is not a config key"):
        slurm.with_sweep(job, ["a..b=1"])


def test_the_verdict_carries_the_nodes_failure_message():
    """razor.node's end record (a rank's exception) reaches the policy's message, and so the job's
    Comment and razorctl status; a stopped rank keeps its own words."""
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    before, _ = srun_report(SRUN_2_NODES)
    outcomes = failed_ranks(before, 75, {"node2": ("IDLE", "")}, ["node1", "node2"], now,
                            {1: "rank 3 exited with code 3: ValueError: the batch is empty"})
    v = on_failure(Policy(backoff_limit=0), outcomes, Restarts(), 1, 2)
    assert v.message.startswith("rank 1 (node2) exited with code 3, its process rank 3: ValueError: the batch is "
                                "empty; backoffLimit 0 reached")
