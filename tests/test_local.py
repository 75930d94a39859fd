"""The local backend with real torchrun processes and real training on the 8x8 digits."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, DATA, env_for_tests, razorctl, razorctl_popen, write_job

pytestmark = pytest.mark.local


def summary(work_dir: Path) -> dict:
    return json.loads((work_dir / "summary.json").read_text())


def last_checkpoint(work_dir: Path) -> Path | None:
    pointer = work_dir / "last_checkpoint"
    return work_dir / pointer.read_text().strip() if pointer.exists() else None


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"job ended (code {proc.returncode}) before {what}: {proc.stdout.read()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_epoch(work_dir: Path) -> int:
    path = last_checkpoint(work_dir)
    m = re.match(r"epoch_(\d+)", path.name) if path else None
    return int(m.group(1)) if m else 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_two_nodes_train_kd_together_and_agree_on_the_weights(tmp_path: Path):
    wd = tmp_path / "wd"
    job = write_job(tmp_path / "kd.yaml", "digits-kd", config=str(CONFIGS / "digits_kd.yaml"),
                    nnodes=2, port="auto", workDir=str(wd),
                    cfgOptions={"schedule.epochs": 12, "algorithm.teacher.epochs": 8})
    res = razorctl("submit", "--local", str(job), cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "razor: job digits-kd: 2 node(s) x 1 process(es) (CPU, gloo)" in out
    assert "[node0] " in out and "lr 0.4 -> 0.1 (8 -> 2 GPUs, total batch 256 -> 64)" in out
    assert re.search(r"razor: done\. student accuracy 0\.9\d+ on 359 held-out samples \(teacher", out)
    assert "razor: job digits-kd succeeded" in out
    # Rank 0 reports; node 1 stays quiet.
    assert not [line for line in out.splitlines() if line.startswith("[node1]") and "epoch" in line]
    s = summary(wd)
    assert s["world_size"] == 2 and s["algorithm"] == "kd"
    assert s["accuracy"] >= 0.93 and s["teacher_accuracy"] >= 0.93
    assert len(s["weights_digests"]) == 2 and len(set(s["weights_digests"])) == 1
    assert (wd / "epoch_12.pth").exists() and last_checkpoint(wd) == wd / "epoch_12.pth"
    assert (wd / "teacher" / "epoch_8.pth").exists()
    assert (wd / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (wd / "config.yaml").exists() and (wd / "train.log").exists()
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["stage"] == "student"] == list(range(1, 13))
    state = torch.load(wd / "epoch_12.pth", weights_only=False)
    assert state["meta"]["epoch"] == 12 and state["meta"]["world_size"] == 2
    assert len(state["rng"]) == 2 and "optimizer" in state and "scheduler" in state


def _long_job(tmp_path: Path, epochs: int) -> tuple[Path, Path]:
    wd = tmp_path / "wd"
    job = write_job(tmp_path / "long.yaml", "long", config=str(CONFIGS / "digits_mlp.yaml"),
                    nnodes=2, port="auto", workDir=str(wd),
                    cfgOptions={"schedule.epochs": epochs, "runtime.stop_check_interval": 5})
    return job, wd


def test_killed_job_resumes_from_its_last_checkpoint(tmp_path: Path):
    job, wd = _long_job(tmp_path, 2000)
    proc = razorctl_popen("submit", "--local", str(job), cwd=tmp_path)
    try:
        wait_for(lambda: checkpoint_epoch(wd) >= 4, 240, "epoch 4's checkpoint", proc)
        for pid in descendants(proc.pid) + [proc.pid]:  # a hard kill of everything, no warning
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    killed_at = checkpoint_epoch(wd)
    assert killed_at >= 4
    torch.load(last_checkpoint(wd), weights_only=False)  # the latest is whole, never half-written
    again = write_job(tmp_path / "again.yaml", "long", config=str(CONFIGS / "digits_mlp.yaml"),
                      nnodes=2, port="auto", workDir=str(wd),
                      cfgOptions={"schedule.epochs": killed_at + 2, "runtime.stop_check_interval": 5})
    res = razorctl("submit", "--local", str(again), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed from {wd}/epoch_{killed_at}.pth (epoch {killed_at})" in res.stdout
    assert "epoch   1/" not in res.stdout, "a resumed job must not start again from epoch 0"
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in rows]
    assert epochs == list(range(1, killed_at + 3)), "each epoch recorded exactly once"


def test_ctrl_c_saves_a_checkpoint_and_the_next_submit_resumes(tmp_path: Path):
    job, wd = _long_job(tmp_path, 2000)
    proc = razorctl_popen("submit", "--local", str(job), cwd=tmp_path)
    wait_for(lambda: checkpoint_epoch(wd) >= 3, 240, "epoch 3's checkpoint", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert "razor: SIGINT: stopping all nodes (they save a checkpoint first); what is still running after " \
        "120s is killed" in out
    assert "stopping on SIGTERM: checkpoint" in out
    assert "submit it again to resume from its last checkpoint" in out
    saved = last_checkpoint(wd)
    meta = torch.load(saved, weights_only=False)["meta"]
    assert not descendants(proc.pid)
    resume = write_job(tmp_path / "again.yaml", "long", config=str(CONFIGS / "digits_mlp.yaml"),
                       nnodes=2, port="auto", workDir=str(wd),
                       cfgOptions={"schedule.epochs": meta["epoch"] + 2, "runtime.stop_check_interval": 5})
    res = razorctl("submit", "--local", str(resume), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed from {saved}" in res.stdout


#: Runs the supervisor of a job's plan, each node being tests/data/slow_stop.py itself (no torchrun,
#: no razor.node: their own stop grace is razor.node's test), so that the supervisor's is seen alone.
SUPERVISE = """
import sys
from pathlib import Path
from razor.backends.local import Supervisor, plan
from razor.launcher import NodeLaunch
from razor.spec import load_job

p = plan(load_job(sys.argv[1]), Path.cwd(), port=29999)
p.nodes[:] = [NodeLaunch(n.rank, n.env, [sys.executable, sys.argv[2]]) for n in p.nodes]
supervisor = Supervisor(p)
print(f"grace {supervisor.grace:g}", flush=True)
sys.exit(supervisor.run())
"""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or half written
        return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("grace, save", [(8, 3), (3, 60)], ids=["save-fits-the-grace", "save-too-slow"])
def test_ctrl_c_gives_the_nodes_the_jobs_grace_then_kills_them(tmp_path: Path, grace: int, save: int):
    """After Ctrl-C each node has the job's terminationGracePeriodSeconds to save its checkpoint:
    a save that fits is not cut short; a node still running after it is killed, with the
    process it started in a session of its own (as torchrun starts its workers)."""
    job = write_job(tmp_path / "slow.yaml", "slow", script=str(DATA / "slow_stop.py"), nnodes=2,
                    workDir=str(tmp_path / "wd"), terminationGracePeriodSeconds=grace,
                    env={"SLOW_STOP": save, "SLOW_STOP_DIR": str(tmp_path)})
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(job), str(DATA / "slow_stop.py")],
                            cwd=tmp_path, env=env_for_tests(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    nodes: list[dict] = []
    try:
        nodes = [wait_for(lambda r=r: read_json(tmp_path / f"node{r}.json"), 60, f"node {r}", proc)
                 for r in range(2)]
        proc.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        out, _ = proc.communicate(timeout=grace + 20)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            for pid in [proc.pid, *(pid for n in nodes for pid in n.values())]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.communicate()
    assert f"grace {grace}" in out
    assert (f"razor: SIGINT: stopping all nodes (they save a checkpoint first); what is still running "
            f"after {grace}s is killed") in out
    if save < grace:
        assert proc.returncode == 75, out
        assert all((tmp_path / f"saved{r}").exists() for r in range(2)), out
        assert "killing them" not in out and took >= save
    else:
        assert f"razor: nodes still running {grace}s after the stop (spec.terminationGracePeriodSeconds); " \
               "killing them" in out
        assert grace <= took < grace + 15, out
        assert not any((tmp_path / f"saved{r}").exists() for r in range(2))
        assert proc.returncode == 130, out
    for n in nodes:
        wait_for(lambda n=n: not alive(n["pid"]) and not alive(n["child"]), 10, "every process gone")


def test_user_script_gets_the_launcher_contract(tmp_path: Path):
    wd = tmp_path / "wd"
    job = write_job(tmp_path / "mine.yaml", "mine", script=str(DATA / "check_env.py"),
                    args=["--flag", "two words"], nnodes=2, nprocPerNode=2, port="auto", workDir=str(wd))
    res = razorctl("submit", "--local", str(job), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    records = [json.loads((wd / f"rank{r}.json").read_text()) for r in range(4)]
    for rank, rec in enumerate(records):
        assert rec["RANK"] == str(rank) and rec["WORLD_SIZE"] == "4"
        assert rec["NODE_RANK"] == str(rank // 2) and rec["LOCAL_RANK"] == str(rank % 2)
        assert (rec["NNODES"], rec["NPROC_PER_NODE"], rec["MASTER_ADDR"]) == ("2", "2", "127.0.0.1")
        assert (rec["RAZOR_JOB_NAME"], rec["RAZOR_ATTEMPT"], rec["CUDA_VISIBLE_DEVICES"]) == ("mine", "1", "-1")
        assert rec["args"] == ["--flag", "two words"] and rec["rank_sum"] == 6
    assert len({rec["MASTER_PORT"] for rec in records}) == 1


def test_a_failing_rank_stops_the_whole_gang(tmp_path: Path):
    job = write_job(tmp_path / "fail.yaml", "fails", script=str(DATA / "fail_rank1.py"), nnodes=2,
                    port="auto", workDir=str(tmp_path / "wd"))
    started = time.monotonic()
    res = razorctl("submit", "--local", str(job), cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "razor: node 1 exited with code" in res.stdout
    assert re.search(r"razor: job fails failed after [\d.]+s: node 1 exited with code \d+", res.stdout)
    assert time.monotonic() - started < 100, "rank 0 must not be left waiting in its barrier"


def test_two_jobs_with_port_auto_run_at_once(tmp_path: Path):
    procs = []
    for name in ("first", "second"):
        job = write_job(tmp_path / f"{name}.yaml", name, config=str(CONFIGS / "digits_mlp.yaml"),
                        nnodes=2, port="auto", workDir=str(tmp_path / name),
                        cfgOptions={"schedule.epochs": 3})
        procs.append(razorctl_popen("submit", "--local", str(job), cwd=tmp_path))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ports = [re.search(r"rendezvous 127\.0\.0\.1:(\d+) \(auto\)", out).group(1) for out in outs]
    assert ports[0] != ports[1]
    for name in ("first", "second"):
        assert summary(tmp_path / name)["world_size"] == 2


def test_port_in_use_is_refused_with_the_field_named(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        job = write_job(tmp_path / "p.yaml", "busy", config=str(CONFIGS / "digits_mlp.yaml"),
                        port=port, workDir=str(tmp_path / "wd"))
        res = razorctl("submit", "--local", str(job), cwd=tmp_path)
    assert res.returncode == 2
    assert f"spec.port: port {port} on this machine is in use" in res.stderr
    assert "set port: auto" in res.stderr
    assert not (tmp_path / "wd").exists()


def test_missing_config_and_bad_cfg_options_are_refused_before_anything_starts(tmp_path: Path):
    job = write_job(tmp_path / "m.yaml", "missing", config="configs/nope.yaml", workDir=str(tmp_path / "wd"))
    res = razorctl("submit", "--local", str(job), cwd=tmp_path)
    assert res.returncode == 2
    assert f"spec.config: 'configs/nope.yaml' not found (relative to {tmp_path})" in res.stderr
    job = write_job(tmp_path / "k.yaml", "badkey", config=str(CONFIGS / "digits_mlp.yaml"),
                    workDir=str(tmp_path / "wd"), cfgOptions={"optimizer.lrr": 0.1})
    res = razorctl("submit", "--local", str(job), cwd=tmp_path)
    assert res.returncode == 2
    assert "spec.cfgOptions: optimizer.lrr: the config has no key 'lrr' at optimizer" in res.stderr
    assert "Did you mean 'optimizer.lr'?" in res.stderr
    assert not (tmp_path / "wd").exists()


def test_render_local_prints_the_plan_and_runs_nothing(tmp_path: Path):
    job = write_job(tmp_path / "r.yaml", "plan", config=str(CONFIGS / "digits_mlp.yaml"), nnodes=2,
                    port=29517, workDir=str(tmp_path / "wd"))
    res = razorctl("render", "--local", str(job), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "# node 0" in res.stdout and "# node 1" in res.stdout
    assert "MASTER_PORT=29517" in res.stdout and "NODE_RANK=1" in res.stdout
    assert "-m razor.node -m razor_trainer" in res.stdout
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("example", ["razorjob-cpu-debug.yaml", "razorjob-user-script.yaml"])
def test_examples_run_locally(tmp_path: Path, example: str):
    from conftest import ROOT

    res = razorctl("submit", "--local", str(ROOT / "examples" / example), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "succeeded" in res.stdout
