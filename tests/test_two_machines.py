"""One RazorJob on two machines without a scheduler: ``razorctl submit --local --node-rank N
--master-addr 10.81.0.1`` on each.

Where one host pretends to be two machines: each "machine" is a network namespace of its own
(made here, names unique to this test run, removed afterwards whatever happens), joined by a veth
pair: 10.81.0.1 (node 0, the master) and 10.81.0.2 (node 1); there is no other route in or out,
and neither has the host's interfaces. Each node runs in its own working directory with its own
relative work dir (two folders, no shared disk), and its own razorctl supervisor. What the two do
share, and real machines would not, is the filesystem and so the interpreter's path (docs/local.md
says what two real machines need: the same install on both) and the per-user record folder, here
the test's own.

The hostname resolves to no address of either namespace, so gloo would not find its way from the
hostname: the nodes meet only because razor.node derives the interface of the route to
MASTER_ADDR (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME) and says so.

Needs root (network namespaces); skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONFIGS, env_for_tests, write_job

pytestmark = pytest.mark.local

MASTER = "10.81.0.1"
ADDRS = ("10.81.0.1", "10.81.0.2")
NETNS_DIR = Path("/var/run/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def machines():
    """Two network namespaces joined by a veth pair: ``[(namespace, interface, address)]``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the two machines are network namespaces (ip netns add)")
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("needs iproute2's ip and util-linux's nsenter")
    tag = f"{os.getpid() % 100000}"
    made = []
    out = [(f"razor-2m-{tag}-{n}", f"rz2m{tag}n{n}"[:15], ADDRS[n]) for n in (0, 1)]
    try:
        for ns, _, _ in out:
            res = ip("netns", "add", ns, check=False)
            if res.returncode != 0:
                pytest.skip(f"cannot make a network namespace here: {res.stderr.strip()}")
            made.append(ns)
        (ns0, if0, addr0), (ns1, if1, addr1) = out
        ip("-n", ns0, "link", "add", if0, "type", "veth", "peer", "name", if1, "netns", ns1)
        for ns, ifname, addr in out:
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            ip("-n", ns, "link", "set", ifname, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield out
    finally:
        for ns in made:
            pids = ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            ip("netns", "del", ns, check=False)


def on_machine(ns: str, cwd: Path, *args: str, state: Path) -> subprocess.Popen:
    """``razorctl ARGS`` in network namespace ``ns`` (only its network: the files are the host's)."""
    env = {**env_for_tests(), "XDG_STATE_HOME": str(state)}
    return subprocess.Popen(["nsenter", f"--net={NETNS_DIR / ns}", sys.executable, "-m", "razor.cli", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_both(machines, tmp_path: Path, job: Path) -> list[str]:
    """The same command on both machines, node 1 first (it waits for the master); both outputs."""
    procs = []
    for rank in (1, 0):
        ns = machines[rank][0]
        procs.append(on_machine(ns, tmp_path / f"machine{rank}", "submit", "--local", "--node-rank", str(rank),
                                "--master-addr", MASTER, str(job), state=tmp_path / "state"))
        time.sleep(0.5)
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    node1, node0 = outs
    assert [procs[1].returncode, procs[0].returncode] == [0, 0], f"node 0:\n{node0}\nnode 1:\n{node1}"
    # A success reads as one: no traceback (torch's exit barrier race is one razor-node line).
    for out in (node0, node1):
        assert "Traceback" not in out, out
    return [node0, node1]


def test_a_job_trains_across_two_machines_and_resumes_from_node_0s_checkpoint(machines, tmp_path: Path):
    for rank in (0, 1):
        (tmp_path / f"machine{rank}").mkdir()
    job = write_job(tmp_path / "two.yaml", "two", config=str(CONFIGS / "digits_mlp.yaml"), nnodes=2,
                    nprocPerNode=1, workDir="wd", masterAddrTimeoutSeconds=120,
                    cfgOptions={"schedule.epochs": 2})
    node0, node1 = run_both(machines, tmp_path, job)
    wd = [tmp_path / f"machine{rank}" / "wd" for rank in (0, 1)]

    # Each node derived its interface from the route to the master, and said so.
    for out, (_, ifname, addr) in zip((node0, node1), machines):
        assert (f"razor-node: network interface {ifname} for gloo and NCCL: it holds {addr}, the local address "
                f"of the route to MASTER_ADDR {MASTER} (set GLOO_SOCKET_IFNAME={ifname} "
                f"NCCL_SOCKET_IFNAME='={ifname}'") in out, out
    assert "razor: job two: node 0 of 2 x 1 process(es) (CPU, gloo), rendezvous 10.81.0.1:29500" in node0
    assert re.search(r"razor: job two node 1 Succeeded in [\d.]+s, attempt 1", node1), node1
    # They met across the namespaces: one process group of 2 nodes x 1 process.
    summary = json.loads((wd[0] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["weights_digests"]) == 2 and len(set(summary["weights_digests"])) == 1
    # Only rank 0 writes the work dir: node 1's machine holds no checkpoint.
    assert (wd[0] / "epoch_2.pth").exists()
    assert not list(wd[1].glob("epoch_*.pth")) and not (wd[1] / "last_checkpoint").exists()

    # Run on: node 0 resumes from its own checkpoint and sends it to node 1, which has none.
    longer = write_job(tmp_path / "two.yaml", "two", config=str(CONFIGS / "digits_mlp.yaml"), nnodes=2,
                       nprocPerNode=1, workDir="wd", masterAddrTimeoutSeconds=120,
                       cfgOptions={"schedule.epochs": 3})
    node0, node1 = run_both(machines, tmp_path, longer)
    assert f"resumed from {Path('wd') / 'epoch_2.pth'}" in node0 or f"resumed from {wd[0] / 'epoch_2.pth'}" in node0, \
        node0
    summary = json.loads((wd[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["weights_digests"])) == 1
    rows = [json.loads(line) for line in (wd[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3], "epochs 1 and 2 were not trained again"
    assert not list(wd[1].glob("epoch_*.pth"))
