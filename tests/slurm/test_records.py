"""razorctl --slurm on a real cluster: slurm.setup and slurm.python, the allocation options, the
progress and the nodes' failures in the status, a job slurmctld has forgotten, and sweeps."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from slurm.test_bridge import CONFIGS, razorctl, submit, write
from slurm_cluster import SlurmCluster

#: A user's script: records what it sees, reports progress, and fails when asked to.
SCRIPT = """\
import json, os, sys
from razor.progress import report
report(stage="train", epoch=1, epochs=2, step=5, steps=10, metrics={"loss": 0.5})
out = os.environ["RAZOR_WORK_DIR"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"seen-{os.environ['RANK']}.json"), "w") as fh:
    json.dump({"env": dict(os.environ), "python": sys.executable, "argv": sys.argv[1:]}, fh)

from torch.distributed.elastic.multiprocessing.errors import record  # the traceback reaches razor


@record
def main():
    if sys.argv[1:] == ["fail"]:
        raise ValueError("the batch is empty")


main()
"""


def wait_ok(cluster: SlurmCluster, tmp: Path, job_id: str, want: int = 0) -> str:
    res = razorctl(cluster, "wait", "--slurm", job_id, "--timeout", "200", cwd=tmp, timeout=240)
    assert res.returncode == want, res.stdout + res.stderr + cluster.log_tail()
    return res.stdout


def test_setup_python_and_allocation_options(slurm: SlurmCluster, tmp_path: Path):
    (tmp_path / "train.py").write_text(SCRIPT)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python").write_text(f"#!/bin/sh\nexport VIA_SETUP_PYTHON=1\nexec {sys.executable} \"$@\"\n")
    (shim / "python").chmod(0o755)
    mail = 'Ada "L" # $HOME $(id)'
    path = write(tmp_path, "opts", script=str(tmp_path / "train.py"), workDir=str(tmp_path / "wd"), slurm={
        "partition": "debug", "setup": [f"export PATH={shim}:$PATH", "export FROM_SETUP=yes"], "python": "python",
        "mem": "100M", "exclusive": True, "sbatchArgs": ["--mail-type=END", f"--mail-user={mail}"]})
    job_id = submit(slurm, tmp_path, path)
    slurm.submitted.append(job_id)
    rec = slurm.job(job_id)
    assert rec["MinMemoryNode"] == "100M" and rec["OverSubscribe"] == "NO"  # --mem, --exclusive
    assert rec["MailUser"] == mail, "the value reached sbatch as written: quoted, nothing expanded"
    wait_ok(slurm, tmp_path, job_id)
    seen = json.loads((tmp_path / "wd" / "seen-0.json").read_text())
    assert seen["env"]["FROM_SETUP"] == "yes", "the nodes inherit what slurm.setup makes"
    assert seen["env"]["VIA_SETUP_PYTHON"] == "1", "slurm.python found on the PATH slurm.setup made"


def test_a_failing_setup_ends_the_job_with_its_item_named(slurm: SlurmCluster, tmp_path: Path):
    (tmp_path / "train.py").write_text(SCRIPT)
    path = write(tmp_path, "nosetup", script=str(tmp_path / "train.py"), workDir=str(tmp_path / "wd"),
                 slurm={"partition": "debug", "setup": ["module load cuda/12"]})
    job_id = submit(slurm, tmp_path, path)
    out = wait_ok(slurm, tmp_path, job_id, want=1)
    assert f"SLURM job {job_id}: Failed (FAILED, reason NonZeroExitCode, exit code 127:0; from scontrol)" in out
    err = (tmp_path / "wd" / "logs" / f"nosetup-{job_id}.err").read_text()
    assert "razor: slurm.setup item 0 failed with exit code 127; the job does not start" in err
    assert not (tmp_path / "wd" / "seen-0.json").exists()


def test_status_shows_progress_and_failures_and_survives_slurmctld_forgetting(slurm: SlurmCluster, tmp_path: Path):
    """Two jobs, one that succeeds and one whose rank raises: their status from scontrol, then,
    once slurmctld forgot them (MinJobAge; no accounting here), from razor's records."""
    (tmp_path / "train.py").write_text(SCRIPT)
    ids = {}
    for name, args in (("good", []), ("bad", ["fail"])):
        path = write(tmp_path, name, script=str(tmp_path / "train.py"), args=args, workDir=str(tmp_path / name),
                     backoffLimit=0, slurm={"partition": "debug", "cpusPerTask": 1})
        ids[name] = submit(slurm, tmp_path, path)
        slurm.submitted.append(ids[name])
    wait_ok(slurm, tmp_path, ids["good"])
    wait_ok(slurm, tmp_path, ids["bad"], want=1)

    def check(source: str) -> None:
        good = razorctl(slurm, "status", "--slurm", ids["good"], cwd=tmp_path).stdout
        assert good.startswith(f"SLURM job {ids['good']}: Succeeded (") and source in good.splitlines()[0], good
        assert "  progress: epoch 1/2, step 5/10, 25%, loss 0.500, updated " in good, good
        assert "[###" not in good, "no bar when the output is no terminal"
        bad = razorctl(slurm, "status", "--slurm", "bad", cwd=tmp_path).stdout  # by name
        assert bad.startswith(f"SLURM job {ids['bad']}: Failed (") and source in bad.splitlines()[0], bad
        assert re.search(r"  node 0 \(attempt 1\): rank 0 exited with code 1: ValueError: the batch is empty", bad), bad
        assert "    " in bad.split("ValueError: the batch is empty", 1)[1], "the traceback's last lines follow"
        doc = json.loads(razorctl(slurm, "status", "--slurm", ids["good"], "-o", "json", cwd=tmp_path).stdout)
        assert doc["phase"] == "Succeeded" and doc["progress"]["epoch"] == 1 and doc["progress"]["percent"] == 25
        assert doc["work_dir"] == str(tmp_path / "good")
        logs = razorctl(slurm, "logs", "--slurm", ids["bad"], "--rank", "0", cwd=tmp_path)
        assert "ValueError: the batch is empty" in logs.stdout, logs.stderr

    check("from scontrol")
    for job_id in ids.values():
        slurm.wait_forgotten(job_id)
    check("from razor's records in ")
    forgotten = razorctl(slurm, "status", "--slurm", ids["bad"], cwd=tmp_path).stdout
    assert "slurmctld no longer knows the job; no accounting" in forgotten
    assert "  attempt:  1 (its restart counters went with SLURM's record of the job)" in forgotten
    assert razorctl(slurm, "wait", "--slurm", "good", cwd=tmp_path).returncode == 0
    assert razorctl(slurm, "wait", "--slurm", ids["bad"], cwd=tmp_path).returncode == 1
    index = slurm.slurm_dir / "razorctl-state" / "razor" / "slurm" / "razor" / f"{ids['good']}.json"
    record = json.loads(index.read_text())
    assert record["workDir"] == str(tmp_path / "good") and record["nnodes"] == 1 and record["name"] == "good"
    assert json.loads((tmp_path / "good" / "razor-slurm.json").read_text()) == record


def test_a_sweep_is_one_job_array_each_element_with_its_work_dir_and_port(slurm: SlurmCluster, tmp_path: Path):
    wd = tmp_path / "wd"
    path = write(tmp_path, "grid", config=str(CONFIGS / "digits_mlp.yaml"), workDir=str(wd),
                 slurm={"partition": "debug", "cpusPerTask": 1})
    res = razorctl(slurm, "submit", "--slurm", "--sweep", "schedule.epochs=1,2", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = re.search(r"as SLURM job (\d+); a sweep of 2 element\(s\)", res.stdout).group(1)
    slurm.submitted.append(job_id)
    assert f"  {job_id}_1: schedule.epochs=2 -> {wd}/1-schedule.epochs=2" in res.stdout
    assert "#SBATCH --array=0-1" in (wd / "razor-grid.sbatch").read_text()
    out = wait_ok(slurm, tmp_path, job_id)
    assert out.startswith(f"SLURM job {job_id}: Succeeded (a sweep of 2: 2 Succeeded; from scontrol)"), out
    for i, epochs in ((0, 1), (1, 2)):
        assert f"  element {i} (SLURM job " in out and f": schedule.epochs={epochs}): Succeeded (COMPLETED)" in out
        element = wd / f"{i}-schedule.epochs={epochs}"
        assert (element / f"epoch_{epochs}.pth").exists() and not (element / f"epoch_{epochs + 1}.pth").exists()
        assert f"    work dir: {element}" in out
    doc = json.loads(razorctl(slurm, "status", "--slurm", "grid", "-o", "json", cwd=tmp_path).stdout)
    assert [e["element"] for e in doc["elements"]] == [0, 1]
    assert doc["elements"][1]["options"] == {"schedule.epochs": 2}
    assert doc["elements"][1]["progress"]["epochs"] == 2
    ports = {re.search(r"rendezvous \S+:(\d+)", (wd / "logs" / f"grid-{job_id}_{i}.out").read_text()).group(1)
             for i in (0, 1)}
    assert len(ports) == 2, "each element derives its own port"
    one = razorctl(slurm, "status", "--slurm", f"{job_id}_1", cwd=tmp_path).stdout
    assert one.startswith(f"SLURM job {job_id}_1: Succeeded (COMPLETED; from scontrol)"), one
    logs = razorctl(slurm, "logs", "--slurm", f"{job_id}_1", cwd=tmp_path).stdout
    assert "razor: sweep element 1 of 2: schedule.epochs=2" in logs
    whole = razorctl(slurm, "logs", "--slurm", job_id, cwd=tmp_path)
    assert whole.returncode == 1 and f"name one, e.g. razorctl logs --slurm {job_id}_0" in whole.stderr
