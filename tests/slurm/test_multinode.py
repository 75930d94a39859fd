"""razorctl --slurm on two nodes: a RazorJob with nnodes 2 trains across node1 and node2 of the
two-node test cluster (``slurm_two_nodes``: each node a slurmd in its own network namespace, with
its own address and hostname), as it would on two machines."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from slurm.test_bridge import razorctl, submit, write
from slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "trainer" / "configs"
DATA = ROOT / "tests" / "data"


def submit_and_wait(cluster: SlurmCluster, tmp: Path, name: str, **spec) -> str:
    """Write a 2-node CPU RazorJob, ``razorctl submit --slurm`` it, ``razorctl wait`` for it."""
    path = write(tmp, name, nnodes=2, gpusPerNode=0, nprocPerNode=1,
                 slurm={"partition": "debug", "cpusPerTask": 1}, **spec)
    job_id = submit(cluster, tmp, path)
    cluster.submitted.append(job_id)  # cancelled after the test if it is still running
    res = razorctl(cluster, "wait", "--slurm", job_id, "--timeout", "150", cwd=tmp, timeout=180)
    logs = Path(spec["workDir"]) / "logs"
    text = "".join(f"---- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted(logs.glob("*")))
    assert res.returncode == 0, f"{res.stdout}{res.stderr}\n{text}\n{cluster.log_tail()}"
    assert f"SLURM job {job_id}: Succeeded" in res.stdout
    return job_id


def test_a_two_node_job_trains_across_both_nodes(slurm_two_nodes: SlurmCluster, tmp_path: Path):
    wd = tmp_path / "wd"
    job_id = submit_and_wait(slurm_two_nodes, tmp_path, "kd2", config=str(CONFIGS / "digits_kd.yaml"),
                             workDir=str(wd), cfgOptions={"schedule.epochs": 3, "algorithm.teacher.epochs": 2})
    # SLURM gave the job both nodes, one task each; the master is the first of them.
    rec = slurm_two_nodes.job(job_id)
    assert rec is not None and rec["NodeList"] == "node[1-2]" and rec["NumNodes"] == "2"
    batch = (wd / "logs" / f"kd2-{job_id}.out").read_text()
    assert re.search(rf"razor: job {job_id} attempt 1 on node\[1-2\], rendezvous node1:\d+", batch)
    # One torchrun per node, each with its own log; rank 0 (node 0) reports.
    node0 = (wd / "logs" / f"kd2-{job_id}-node0.out").read_text()
    assert (wd / "logs" / f"kd2-{job_id}-node1.out").exists()
    assert "on 2 process(es), cpu (gloo)" in node0
    assert "razor: weights identical on all 2 ranks" in node0
    # What the trainer wrote: 2 ranks ended with the same weights; accuracy and checkpoint.
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["weights_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert summary["accuracy"] > 0.7 and summary["teacher_accuracy"] > 0.7
    assert f"student accuracy {summary['accuracy']:.4f}" in node0
    assert summary["checkpoint"] == str(wd / "epoch_3.pth") and (wd / "epoch_3.pth").exists()
    assert (wd / "last_checkpoint").read_text().strip() == "epoch_3.pth"
    logs = razorctl(slurm_two_nodes, "logs", "--slurm", job_id, "--rank", "0", cwd=tmp_path)
    assert "student accuracy" in logs.stdout


def test_each_rank_runs_on_its_own_node(slurm_two_nodes: SlurmCluster, tmp_path: Path):
    """Rank 0 on node1, rank 1 on node2: distinct hostnames, addresses and network namespaces,
    and gloo connects them (all_gather_object brought each rank's record to the other)."""
    wd = tmp_path / "wd"
    submit_and_wait(slurm_two_nodes, tmp_path, "where", script=str(DATA / "node_identity.py"),
                    workDir=str(wd))
    records = [json.loads((wd / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["all"] == records[1]["all"] == [records[0]["me"], records[1]["me"]]
    addrs = slurm_two_nodes.node_addrs()
    assert sorted(addrs) == ["node1", "node2"] and addrs["node1"] != addrs["node2"]
    for rank, (rec, node) in enumerate(zip(records, ("node1", "node2"))):
        me = rec["me"]
        assert me["rank"] == me["node_rank"] == rank and me["world_size"] == 2
        assert me["hostname"] == me["slurmd_nodename"] == node
        assert me["address"] == addrs[node]
        assert me["master_addr"] == "node1"
    here = os.readlink("/proc/self/ns/net")
    assert len({records[0]["me"]["netns"], records[1]["me"]["netns"], here}) == 3
