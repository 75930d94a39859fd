"""The local backend with real torchrun processes and real training on the 8x8 digits."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
import torch

from conftest import CONFIGS, DATA, env_for_tests, razorctl, razorctl_popen, write_job
from razor.node import descendants

pytestmark = pytest.mark.local

#: How a node's failure reads when razor.node recorded no traceback (flaky.py's sys.exit(3)): the
#: failure policy's message carries the node's own message after the exit code.
NO_TB = r"(?:: \(no traceback recorded[^)]*\))?"


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch):
    """Each test's razorctl keeps its local job records in a folder of its own (XDG_STATE_HOME),
    so that no other test session's job of the same name is seen as running."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


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
    assert re.search(r"razor: job digits-kd Succeeded in [\d.]+s, attempt 1, restarts: 0 \(counted 0, "
                     r"disruptions 0\); work dir ", out)
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
    # Its supervisor died without recording an end: razorctl status says so, wait does not wait.
    status = razorctl("status", "--local", "long", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "job long: Unknown, attempt 1" in status.stdout
    assert f"its supervisor (razorctl pid {proc.pid}) is gone without recording how the job ended" in status.stdout
    assert razorctl("wait", "--local", "long", cwd=tmp_path, timeout=30).returncode == 1
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
from razor.backends.local import plan
from razor.backends.local_run import Supervisor
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
                    port="auto", workDir=str(tmp_path / "wd"), backoffLimit=0)
    started = time.monotonic()
    res = razorctl("submit", "--local", str(job), cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "razor: node 1 exited with code" in res.stdout
    assert re.search(r"razor: job fails Failed in [\d.]+s, attempt 1, restarts: 0 \(counted 0, disruptions 0\): "
                     r"rank 1 exited with code \d+" + NO_TB + r"; backoffLimit 0 reached after 0 restart\(s\)",
                     res.stdout)
    assert time.monotonic() - started < 100, "rank 0 must not be left waiting in its barrier"


# ----------------------------------------------------------------------------- the failure policy
# tests/data/flaky.py: rank FAIL_RANK exits FAIL_CODE on the first FAIL_ATTEMPTS attempts (the
# others wait in a barrier), or every rank waits to be stopped on the first HOLD_ATTEMPTS; each
# rank records each attempt in attempts.jsonl.


def flaky_job(tmp_path: Path, env: dict, **spec) -> tuple[Path, Path]:
    wd = tmp_path / "wd"
    spec = {"nnodes": 2, "port": "auto", "restartBackoffSeconds": 1, **spec}
    return write_job(tmp_path / "flaky.yaml", "flaky", script=str(DATA / "flaky.py"), workDir=str(wd),
                     env={k: str(v) for k, v in env.items()}, **spec), wd


def attempts(wd: Path) -> list[tuple[int, int]]:
    """(attempt, rank) of every rank that started, in order of attempts."""
    path = wd / "attempts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sorted((r["attempt"], r["rank"]) for r in rows)


@pytest.mark.parametrize("spec, then", [
    ({"backoffLimit": 3}, "in 1s (restart 1 of 3)"),
    ({"backoffLimit": 0, "retryableExitCodes": [3]},
     "in 1s (exit code 3 is retryable: not counted against backoffLimit)"),
], ids=["counted", "retryable"])
def test_a_failed_attempt_restarts_the_whole_gang_and_the_next_attempt_succeeds(tmp_path: Path, spec, then):
    """Rank 1 fails on attempt 1 (exit 3, which razor.node reports as its worker's): every node starts again as
    attempt 2, with RAZOR_ATTEMPT=2, after the backoff, and the job succeeds."""
    job, wd = flaky_job(tmp_path, {"FAIL_ATTEMPTS": 1}, **spec)
    res = razorctl("submit", "--local", str(job), cwd=tmp_path, timeout=240)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "razor: node 1 exited with code 3; stopping the other nodes" in out
    assert re.search(r"razor: rank 1 exited with code 3" + NO_TB + re.escape(f"; restarting all 2 rank(s) as attempt 2 "
                                                                         f"{then}"), out), out
    assert re.search(r"razor: attempt 2 of job flaky: rendezvous 127\.0\.0\.1:\d+ \(auto\)", out)
    counted = 1 if "retryableExitCodes" not in spec else 0
    assert re.search(rf"razor: job flaky Succeeded in [\d.]+s, attempt 2, restarts: 1 \(counted {counted}, "
                     rf"disruptions 0\); work dir {re.escape(str(wd))}", out), out
    assert attempts(wd) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert "rank 0: attempt 2 passed" in out and "rank 1: attempt 2 passed" in out
    restarted, done = out.index("restarting all 2 rank(s)"), out.index("attempt 2 of job flaky")
    assert "[node" not in out[restarted:done], "the next attempt starts once every node of the last has gone"


def test_a_permanent_exit_code_fails_the_job_at_once(tmp_path: Path):
    """The worker's own exit code (flaky.py's 3), made permanent: no restart."""
    job, wd = flaky_job(tmp_path, {"FAIL_ATTEMPTS": "all"}, backoffLimit=5, permanentExitCodes=[3])
    res = razorctl("submit", "--local", str(job), cwd=tmp_path, timeout=120)
    out = res.stdout
    assert res.returncode == 3, out + res.stderr  # the failed rank's own code, as razorctl's
    assert re.search(r"razor: job flaky Failed in [\d.]+s, attempt 1, restarts: 0 \(counted 0, disruptions 0\): "
                     r"rank 1 exited with code 3" + NO_TB + "; exit code 3 is permanent, not restarted", out), out
    assert "restarting" not in out
    assert attempts(wd) == [(1, 0), (1, 1)]


def test_a_workers_permanent_exit_code_reaches_the_policy(tmp_path: Path):
    """torchrun exits 1 whatever its worker's code; razor.node reports the worker's own."""
    job, wd = flaky_job(tmp_path, {"FAIL_ATTEMPTS": "all", "FAIL_CODE": 2}, backoffLimit=1,
                        restartBackoffSeconds=0)
    res = razorctl("submit", "--local", str(job), cwd=tmp_path, timeout=120)
    assert re.search(r"rank 1 exited with code 2" + NO_TB + "; exit code 2 is permanent, not restarted", res.stdout)
    assert attempts(wd) == [(1, 0), (1, 1)]


def test_backoff_limit_reached_fails_the_job_with_the_counts(tmp_path: Path):
    job, wd = flaky_job(tmp_path, {"FAIL_ATTEMPTS": "all"}, backoffLimit=1)
    res = razorctl("submit", "--local", str(job), cwd=tmp_path, timeout=240)
    out = res.stdout
    assert res.returncode == 3, out + res.stderr  # the failed rank's own code, as razorctl's
    assert re.search(r"razor: rank 1 exited with code 3" + NO_TB + r"; restarting all 2 rank\(s\) as attempt 2 in 1s "
                     r"\(restart 1 of 1\)", out), out
    assert re.search(r"razor: job flaky Failed in [\d.]+s, attempt 2, restarts: 1 \(counted 1, disruptions 0\): "
                     r"rank 1 exited with code 3" + NO_TB + r"; backoffLimit 1 reached after 1 restart\(s\)", out), out
    assert attempts(wd) == [(1, 0), (1, 1), (2, 0), (2, 1)]


def node_pid(root: int, rank: int) -> int:
    """The razor.node process of node ``rank`` below ``root`` (razorctl)."""
    for pid in descendants(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"razor.node" in argv and f"NODE_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no razor.node of node {rank} below {root}")


def test_a_node_stopped_by_someone_else_is_a_disruption_not_counted(tmp_path: Path):
    """SIGTERM to node 1 alone (not from razorctl: a preemption, a shutdown): it saves and exits
    75, and the gang restarts at once without using the restart budget (backoffLimit 0)."""
    job, wd = flaky_job(tmp_path, {"HOLD_ATTEMPTS": 1}, backoffLimit=0, restartBackoffSeconds=30)
    proc = razorctl_popen("submit", "--local", str(job), cwd=tmp_path)
    try:
        wait_for(lambda: (wd / "ready0").exists() and (wd / "ready1").exists(), 120, "attempt 1 running", proc)
        os.kill(node_pid(proc.pid, 1), signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert ("razor: rank 1 exited with code 75: stopped by a signal razor did not send (checkpoint saved); "
            "restarting all 2 rank(s) as attempt 2 (a disruption: not counted against backoffLimit)") in out
    assert re.search(r"razor: job flaky Succeeded in [\d.]+s, attempt 2, restarts: 1 \(counted 0, "
                     r"disruptions 1\)", out), out
    assert attempts(wd) == [(1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.parametrize("when", ["running", "backoff"])
def test_ctrl_c_stops_everything_and_never_restarts(tmp_path: Path, when: str):
    """Ctrl-C while the gang runs: every node stops (exit 75), no restart, though razor itself
    sent the SIGTERM that made them exit 75. Ctrl-C during the backoff: the next attempt never
    starts."""
    env = {"HOLD_ATTEMPTS": 1} if when == "running" else {"FAIL_ATTEMPTS": 1}
    job, wd = flaky_job(tmp_path, env, restartBackoffSeconds=60)
    proc = razorctl_popen("submit", "--local", str(job), cwd=tmp_path)
    seen = []

    def ready() -> bool:
        if when == "running":
            return (wd / "ready0").exists() and (wd / "ready1").exists()
        line = proc.stdout.readline()
        seen.append(line)
        return "restarting all 2 rank(s) as attempt 2 in 60s" in line

    try:
        wait_for(ready, 120, f"the job {when}", proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(seen) + out
    if when == "running":
        assert proc.returncode == 75, out
        assert "razor: SIGINT: stopping all nodes (they save a checkpoint first)" in out
        assert "restarting" not in out
    else:
        assert proc.returncode == 130, out
        assert "razor: SIGINT: stopping; no further attempt starts" in out
    assert re.search(r"razor: job flaky stopped \(SIGINT\) after [\d.]+s, attempt 1, restarts: 0 \(counted 0, "
                     r"disruptions 0\); submit it again to resume from its last checkpoint", out), out
    assert "attempt 2 of job flaky" not in out
    assert attempts(wd) == [(1, 0), (1, 1)]


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

    # As written, but in a work dir of the test's own: the repository's work_dirs/ may hold another
    # run's (and so another job's) checkpoints, which a second run would not train past.
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["spec"]["workDir"] = str(tmp_path / "wd")
    (tmp_path / example).write_text(yaml.safe_dump(doc))
    res = razorctl("submit", "--local", str(tmp_path / example), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Succeeded" in res.stdout


# ----------------------------------------------------------------------------- one node per machine
# ``submit --local --node-rank N --master-addr HOST``: here both "machines" are this one, each node
# in a folder of its own (its own work dir), talking over loopback; tests/test_two_machines.py
# runs them in two network namespaces.


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def node_folders(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / f"machine{rank}" for rank in (0, 1)]
    for folder in folders:
        folder.mkdir()
    return folders


def test_each_node_of_a_two_node_job_runs_from_its_own_terminal(tmp_path: Path):
    port = free_tcp_port()
    job = write_job(tmp_path / "mine.yaml", "mine", script=str(DATA / "check_env.py"), args=["x"], nnodes=2,
                    nprocPerNode=2, port=port, workDir="wd")
    folders = node_folders(tmp_path)
    # What node 1 runs (razorctl render has no --node-rank yet: the backend's render, as it would call it).
    from razor.backends import get
    from razor.spec import load_job

    script = get("local", cwd=folders[1], node_rank=1, master_addr="127.0.0.1").render(load_job(job), str(job))
    assert "# node 1" in script and "# node 0" not in script
    assert "MASTER_ADDR=127.0.0.1" in script and f"MASTER_PORT={port}" in script and "NODE_RANK=1" in script
    # Node 1 first: it waits for the master to answer.
    node1 = razorctl_popen("submit", "--local", "--node-rank", "1", "--master-addr", "127.0.0.1", str(job),
                           cwd=folders[1])
    time.sleep(1)
    node0 = razorctl_popen("submit", "--local", "--node-rank", "0", str(job), cwd=folders[0])
    out0, _ = node0.communicate(timeout=180)
    out1, _ = node1.communicate(timeout=60)
    assert (node0.returncode, node1.returncode) == (0, 0), out0 + out1
    assert f"razor: job mine: node 0 of 2 x 2 process(es) (CPU, gloo), rendezvous 127.0.0.1:{port} (fixed)" in out0
    assert f"razor: waiting for the master 127.0.0.1:{port} (node 0) to answer" in out1
    assert re.search(r"razor: job mine node 1 Succeeded in [\d.]+s, attempt 1, restarts: 0 \(counted 0, "
                     r"disruptions 0\); work dir wd", out1), out1
    assert "[node" not in out0 + out1, "one node: its output is not prefixed"
    # One gang of 2 x 2 processes; each node's ranks wrote in that node's own work dir.
    for rank in range(4):
        rec = json.loads((folders[rank // 2] / "wd" / f"rank{rank}.json").read_text())
        assert rec["WORLD_SIZE"] == "4" and rec["NODE_RANK"] == str(rank // 2) and rec["rank_sum"] == 6
        assert rec["MASTER_PORT"] == str(port)
    status = razorctl("status", "--local", "mine", cwd=tmp_path)
    assert "job mine node 0 of 2: Succeeded, attempt 1" in status.stdout
    assert "job mine node 1 of 2: Succeeded, attempt 1" in status.stdout
    assert f"work dir:   {folders[1] / 'wd'}" in status.stdout


def test_a_node_rank_the_job_does_not_have_is_refused(tmp_path: Path):
    job = write_job(tmp_path / "j.yaml", "two", script=str(DATA / "check_env.py"), nnodes=2, port=29577,
                    workDir=str(tmp_path / "wd"))
    res = razorctl("submit", "--local", "--node-rank", "2", "--master-addr", "10.0.0.1", str(job), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr == ("razorctl: error: --node-rank 2: job two has 2 node(s) (spec.nnodes), ranked 0 to 1\n")
    res = razorctl("submit", "--local", "--node-rank", "1", str(job), cwd=tmp_path)
    assert res.returncode == 2 and "--node-rank needs --master-addr HOST" in res.stderr
    auto = write_job(tmp_path / "a.yaml", "two", script=str(DATA / "check_env.py"), nnodes=2, port="auto",
                     workDir=str(tmp_path / "wd"))
    res = razorctl("submit", "--local", "--node-rank", "0", str(auto), cwd=tmp_path)
    assert res.returncode == 2
    assert "spec.port: port: auto cannot be used with --node-rank: every machine must know" in res.stderr
    assert not (tmp_path / "wd").exists()


def test_a_master_that_never_answers_ends_the_node_with_one_clear_line(tmp_path: Path):
    port = free_tcp_port()  # nothing listens there
    job = write_job(tmp_path / "j.yaml", "lonely", script=str(DATA / "check_env.py"), nnodes=2, port=port,
                    workDir="wd", masterAddrTimeoutSeconds=2)
    started = time.monotonic()
    res = razorctl("submit", "--local", "--node-rank", "1", "--master-addr", "127.0.0.1", str(job), cwd=tmp_path,
                   timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert time.monotonic() - started < 30
    assert re.search(rf"razor: job lonely node 1 Failed in [\d.]+s, attempt 1, restarts: 0 \(counted 0, "
                     rf"disruptions 0\): the master 127\.0\.0\.1:{port} \(node 0\) did not answer within 2s "
                     rf"\(spec\.masterAddrTimeoutSeconds\): Connection refused; start node 0 first", res.stdout), res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    wait = razorctl("wait", "--local", "lonely", cwd=tmp_path)
    assert wait.returncode == 1
    assert "job lonely node 1 of 2: Failed (exit code 1): the master 127.0.0.1" in wait.stdout


def test_a_failed_node_is_not_restarted_and_its_message_is_in_the_summary(tmp_path: Path):
    """One node of a gang alone: rank 1 raises, node 1 ends with its code and its traceback's
    message, and is not started again (its peer would not come back with it)."""
    port = free_tcp_port()
    job = write_job(tmp_path / "j.yaml", "raises", script=str(DATA / "raise_rank1.py"), nnodes=2, port=port,
                    workDir="wd", backoffLimit=3)
    folders = node_folders(tmp_path)
    node1 = razorctl_popen("submit", "--local", "--node-rank", "1", "--master-addr", "127.0.0.1", str(job),
                           cwd=folders[1])
    node0 = razorctl_popen("submit", "--local", "--node-rank", "0", str(job), cwd=folders[0])
    try:
        out1, _ = node1.communicate(timeout=120)
        # Node 0 knows nothing of it (raise_rank1.py's rank 0 sleeps on): stopped from another terminal.
        cancel = razorctl("cancel", "--local", "raises", cwd=tmp_path, timeout=180)
        assert "job raises node 1 of 2 is not running (Failed)" in cancel.stdout
        assert "job raises node 0 of 2: asked to stop" in cancel.stdout
        node0.communicate(timeout=60)
    finally:
        for p in (node0, node1):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert node1.returncode == 1, out1
    assert re.search(r"razor: job raises node 1 Failed in [\d.]+s, attempt 1, restarts: 0 \(counted 0, disruptions 0\): "
                     r"rank 1 exited with code 1: ValueError: learning rate must be positive, got -0.5", out1), out1
    assert "not restarted: one node of a job on several machines (--node-rank) is started again only together " \
           "with its peers" in out1
    assert "attempt 2" not in out1
    status = razorctl("status", "--local", "raises", "-o", "json", cwd=folders[1])
    docs = {d["nodeRank"]: d for d in json.loads(status.stdout)["supervisors"]}
    assert docs[1]["phase"] == "Failed" and docs[1]["exitCode"] == 1
    assert "ValueError: learning rate must be positive" in docs[1]["message"]
    [failure] = docs[1]["nodeFailures"]
    assert failure["nodeRank"] == 1 and "ValueError: learning rate must be positive" in failure["message"]
    text = razorctl("status", "--local", "raises", cwd=folders[1]).stdout
    assert "  node 1: exit code 1 (attempt 1):\n    rank 1 exited with code 1: ValueError: learning rate" in text


# ----------------------------------------------------------------------------- status, logs, cancel, wait, list


def test_a_running_local_job_is_seen_followed_and_cancelled_from_another_terminal(tmp_path: Path):
    job, wd = _long_job(tmp_path, 2000)
    proc = razorctl_popen("submit", "--local", str(job), cwd=tmp_path)
    output: list[str] = []  # read all along: a full pipe would stop the supervisor
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    follow = None
    try:
        wait_for(lambda: checkpoint_epoch(wd) >= 2 and (wd / "razor-status" / "progress.json").exists(), 240,
                 "epoch 2 and its progress")
        reader.start()
        listed = razorctl("list", "--local", cwd=tmp_path)
        assert re.search(r"^long\s+0,1/2\s+Running\s+1\s+\d+%\s+\S+\s+" + str(proc.pid) + r"\s+" +
                         re.escape(str(wd)) + "$", listed.stdout, re.M), listed.stdout
        status = razorctl("status", "--local", "long", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert "job long: Running, attempt 1, restarts: 0 (counted 0, disruptions 0)" in status.stdout
        assert re.search(r"  progress:   (val, )?epoch \d+/2000, .*updated \d+s ago", status.stdout), status.stdout
        assert "[#" not in status.stdout and "[." not in status.stdout, "no bar when the output is not a terminal"
        doc = json.loads(razorctl("status", "--local", "long", "-o", "json", cwd=tmp_path).stdout)
        assert doc["phase"] == "Running" and doc["pid"] == proc.pid and doc["running"] is True
        assert doc["progress"]["epochs"] == 2000 and doc["progress"]["epoch"] >= 2
        # The same job again while it runs: refused, nothing started.
        again = razorctl("submit", "--local", str(job), cwd=tmp_path)
        assert again.returncode == 2
        assert f"job long is already running on this machine (razorctl pid {proc.pid}" in again.stderr
        logs = razorctl("logs", "--local", "long", cwd=tmp_path)
        assert "epoch" in logs.stdout and "[node0]" not in logs.stdout
        assert razorctl("logs", "--local", "long", "--rank", "5", cwd=tmp_path).returncode == 2
        follow = razorctl_popen("logs", "--local", "long", "-f", cwd=tmp_path)
        cancel = razorctl("cancel", "--local", "long", cwd=tmp_path, timeout=180)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert f"job long: asked to stop (SIGTERM to razorctl pid {proc.pid}): its nodes save a checkpoint" \
            in cancel.stdout
        assert "job long Stopped (exit code 75)" in cancel.stdout
        proc.wait(timeout=60)
        reader.join(30)
        out = "".join(output)
        assert proc.returncode == 75, out
        assert "razor: SIGTERM: stopping all nodes (they save a checkpoint first)" in out
        followed, _ = follow.communicate(timeout=30)
        assert follow.returncode == 0 and "stopping on SIGTERM: checkpoint" in followed, followed
    finally:
        for p in (proc, follow):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    wait = razorctl("wait", "--local", "long", cwd=tmp_path)
    assert wait.returncode == 1
    assert wait.stdout.startswith("job long: Stopped (exit code 75): stopped (SIGTERM); submit it again to resume")
    assert "job long: Stopped" in razorctl("status", "--local", "long", cwd=tmp_path).stdout
    unknown = razorctl("status", "--local", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "no local job 'nope'" in unknown.stderr and "long" in unknown.stderr
