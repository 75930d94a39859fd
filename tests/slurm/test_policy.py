"""The job's failure policy on a real SLURM cluster: the sbatch job requeues itself (razor.policy,
as on every backend) for a failure, counted against backoffLimit; a permanent exit code and
backoffLimit reached end it; a rank stopped by srun after its peer failed does not hide the
failure; a node whose rank failed is kept away from the next attempt where others are left.

tests/data/flaky.py: rank FAIL_RANK exits FAIL_CODE (3; razor.node reports the worker's own code) on
the first FAIL_ATTEMPTS attempts; each rank records each attempt, with its host, in attempts.jsonl.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from slurm.test_bridge import razorctl, submit, write
from slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def flaky(cluster: SlurmCluster, tmp: Path, name: str, env: dict, **spec) -> tuple[str, Path]:
    wd = tmp / "wd"
    spec = {"nnodes": 1, "restartBackoffSeconds": 1, "slurm": {"partition": "debug", "cpusPerTask": 1}, **spec}
    path = write(tmp, name, script=str(DATA / "flaky.py"), workDir=str(wd),
                 env={"FAIL_RANK": "0", **{k: str(v) for k, v in env.items()}}, **spec)
    job_id = submit(cluster, tmp, path)
    cluster.submitted.append(job_id)  # cancelled after the test if it is still running
    return job_id, wd


def attempts(wd: Path) -> list[tuple[int, int, str]]:
    path = wd / "attempts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sorted((r["attempt"], r["rank"], r["host"]) for r in rows)


def finish(cluster: SlurmCluster, tmp: Path, job_id: str, name: str, wd: Path, phase: str) -> tuple[str, str]:
    """Wait for the job; its ``razorctl status --slurm`` and its batch log."""
    res = razorctl(cluster, "wait", "--slurm", job_id, "--timeout", "240", cwd=tmp, timeout=300)
    batch = wd / "logs" / f"{name}-{job_id}.out"
    logs = "".join(f"---- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted((wd / "logs").glob("*")))
    assert f"SLURM job {job_id}: {phase}" in res.stdout, f"{res.stdout}{res.stderr}\n{logs}"
    status = razorctl(cluster, "status", "--slurm", job_id, cwd=tmp).stdout
    return status, batch.read_text()


#: What razor.node said of the failure, which the verdict carries after the exit code (its end
#: record's message: here flaky.py's sys.exit(3), so no traceback; its wording is razor.node's).
DETAIL = r"(?: \([^;]*\)|: [^;]*)?"


def test_a_failed_run_is_requeued_and_the_next_attempt_succeeds(slurm, tmp_path: Path):
    job_id, wd = flaky(slurm, tmp_path, "flaky", {"FAIL_ATTEMPTS": 1}, backoffLimit=2)
    status, batch = finish(slurm, tmp_path, job_id, "flaky", wd, "Succeeded")
    assert re.search(r"razor: rank 0 \((\S+)\) exited with code 3" + DETAIL + r"; restarting all 1 rank\(s\) as attempt 2 in 1s "
                     r"\(restart 1 of 2\); node \1 not excluded: partition debug would keep 0 usable node\(s\) for 1",
                     batch), batch
    assert f"razor: job {job_id} attempt 2" in batch
    assert [(a, r) for a, r, _ in attempts(wd)] == [(1, 0), (2, 0)]  # RAZOR_ATTEMPT: SLURM_RESTART_COUNT + 1
    assert "attempt:  2, restarts: 1 (counted 1, disruptions 0)" in status, status
    rec = slurm.job(job_id)
    assert rec["Restarts"] == "1" and rec["Comment"].startswith("razor: Restarting attempt 2 counted 1 retryable 0;")


def test_a_permanent_exit_code_is_not_requeued(slurm, tmp_path: Path):
    """The worker's own code (flaky.py's 3), made permanent: not requeued."""
    job_id, wd = flaky(slurm, tmp_path, "perm", {"FAIL_ATTEMPTS": "all"}, backoffLimit=3, permanentExitCodes=[3])
    status, batch = finish(slurm, tmp_path, job_id, "perm", wd, "Failed")
    assert re.search(r"razor: rank 0 \(\S+\) exited with code 3" + DETAIL + "; exit code 3 is permanent, not restarted", batch), batch
    assert "attempt 2" not in batch
    assert [(a, r) for a, r, _ in attempts(wd)] == [(1, 0)]
    assert f"SLURM job {job_id}: Failed (FAILED, reason NonZeroExitCode, exit code 3:0" in status, status
    assert "exit code 3 is permanent, not restarted" in status and "restarts: 0 (counted 0, disruptions 0)" in status
    assert slurm.job(job_id)["Restarts"] == "0"


def test_backoff_limit_reached_ends_the_job(slurm, tmp_path: Path):
    job_id, wd = flaky(slurm, tmp_path, "limit", {"FAIL_ATTEMPTS": "all"}, backoffLimit=1)
    status, batch = finish(slurm, tmp_path, job_id, "limit", wd, "Failed")
    assert "as attempt 2 in 1s (restart 1 of 1)" in batch
    assert re.search(r"razor: rank 0 \(\S+\) exited with code 3" + DETAIL + r"; backoffLimit 1 reached after 1 restart\(s\)", batch)
    assert [(a, r) for a, r, _ in attempts(wd)] == [(1, 0), (2, 0)]
    assert "attempt:  2, restarts: 1 (counted 1, disruptions 0)" in status, status


def test_the_failure_is_not_hidden_by_the_rank_srun_stopped_after_it(slurm_two_nodes: SlurmCluster, tmp_path: Path):
    """Rank 1 fails; srun stops rank 0 (--kill-on-bad-exit), which exits 75 and so makes srun's own
    exit code 75, as a preemption would. It is rank 1's failure, counted; with 2 nodes for 2
    ranks, no node can be kept away."""
    job_id, wd = flaky(slurm_two_nodes, tmp_path, "mask", {"FAIL_ATTEMPTS": 1, "FAIL_RANK": 1}, nnodes=2,
                       backoffLimit=1)
    status, batch = finish(slurm_two_nodes, tmp_path, job_id, "mask", wd, "Succeeded")
    err = (wd / "logs" / f"mask-{job_id}.err").read_text()
    assert "srun: error: node2: task 1: Exited with exit code 3" in err, err
    assert re.search(r"razor: rank 1 \(node2\) exited with code 3" + DETAIL + r"; restarting all 2 rank\(s\) as "
                     r"attempt 2 in 1s \(restart 1 of 1\); node node2 not excluded: partition debug would keep 1 "
                     r"usable node\(s\) for 2", batch), batch
    assert "attempt:  2, restarts: 1 (counted 1, disruptions 0)" in status, status


def test_the_node_of_a_failed_rank_is_excluded_from_the_next_attempt(slurm_two_nodes: SlurmCluster, tmp_path: Path):
    job_id, wd = flaky(slurm_two_nodes, tmp_path, "excl", {"FAIL_ATTEMPTS": 1}, backoffLimit=1)
    status, batch = finish(slurm_two_nodes, tmp_path, job_id, "excl", wd, "Succeeded")
    (_, _, first), (_, _, second) = attempts(wd)
    assert {first, second} == {"node1", "node2"}, "attempt 2 ran on the other node"
    assert re.search(rf"razor: rank 0 \({first}\) exited with code 3" + DETAIL + r"; restarting all 1 rank\(s\) "
                     rf"as attempt 2 in 1s \(restart 1 of 1\); node {first} excluded from the next attempts", batch), batch
    assert slurm_two_nodes.job(job_id)["ExcNodeList"] == first
    assert f"excluded: {first}" in status, status


def test_a_lost_node_is_a_disruption_and_the_gang_runs_again(slurm_two_nodes: SlurmCluster, tmp_path: Path):
    """A node dies while the job runs (``scontrol update nodename=node2 state=down``): SLURM kills
    and requeues the job (NODE_FAIL); razor counts that as a disruption, not against backoffLimit
    (0 here: a counted restart would fail the job), and the gang runs again once the node is back."""
    job_id, wd = flaky(slurm_two_nodes, tmp_path, "lost", {"FAIL_ATTEMPTS": 0, "HOLD_ATTEMPTS": 1}, nnodes=2,
                       backoffLimit=0)
    deadline = time.monotonic() + 120
    while not ((wd / "ready0").exists() and (wd / "ready1").exists()):
        assert time.monotonic() < deadline, f"the gang never formed:\n{slurm_two_nodes.job(job_id)}"
        time.sleep(0.5)
    slurm_two_nodes.run("scontrol", "update", "nodename=node2", "state=down", "reason=razor-test-node-lost")
    try:
        slurm_two_nodes.wait_until(job_id, lambda r: r.get("Restarts") == "1", timeout=120)
    finally:
        # The node comes back (slurmctld takes RESUME only once it has finished with the job there).
        back = time.monotonic() + 90
        while slurm_two_nodes.run("scontrol", "update", "nodename=node2", "state=resume",
                                  check=False).returncode != 0:
            if "down" not in slurm_two_nodes.node_states().get("node2", "").lower():
                break
            assert time.monotonic() < back, f"node2 never came back: {slurm_two_nodes.node_states()}"
            time.sleep(2)
    status, _ = finish(slurm_two_nodes, tmp_path, job_id, "lost", wd, "Succeeded")
    assert [(a, r) for a, r, _ in attempts(wd)] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert "attempt:  2, restarts: 1 (counted 0, disruptions 1)" in status, status
