"""A real SLURM cluster for tests: Debian's slurmctld + slurmd (22.05) and a private munged.

    cluster = SlurmCluster().start()
    job_id = cluster.sbatch(script_path)
    assert cluster.wait_job(job_id, timeout=60) == "COMPLETED"
    subprocess.run(["razorctl", ...], env=cluster.env())

``start()`` runs ``scripts/slurm-setup.sh`` (it installs slurm-wlm and munge with apt-get when they
are missing, writes the configuration under ``$RAZOR_SLURM_DIR``, by default /tmp/razor-slurm, and
starts the daemons, or finds them running) and reads ``SLURM_CONF`` from its last line of stdout.
The cluster has one node, this host, with ``nproc`` CPUs in the default partition ``debug``;
accounting is off, so job states come from ``scontrol show job``, which forgets a finished job
MinJobAge (30 s here, ``RAZOR_SLURM_MIN_JOB_AGE``) after it ended, at its next purge (once a
minute): :meth:`wait_forgotten` waits for that.

The cluster is left running when the tests end: a second test session (in another checkout too)
may be using it, and the next start finds it in a fraction of a second. ``stop()`` or
``scripts/slurm-setup.sh stop`` stops it.

``SlurmCluster(nodes=2, hold=True)`` is a separate cluster (``RAZOR_SLURM_NODES=2``: by default
under /tmp/razor-slurm2, ClusterName razor2, its own munged and ports) whose nodes ``node1`` and
``node2`` are each a slurmd in its own network namespace, with its own address and hostname.
With ``hold``, ``start()`` records this process as a user of the cluster and ``stop()`` stops it
(namespaces included) only when no other live process that started it with ``hold`` is left.
Where network namespaces cannot be made, ``start()`` raises :class:`SlurmUnavailable`.

Every wait is bounded and raises :class:`SlurmError` with the job's record and the end of the
daemons' logs.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from razor.backends.slurm_records import record_fields

ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = ROOT / "scripts" / "slurm-setup.sh"

#: Job states after which a job does not run again by itself.
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT",
})


class SlurmError(RuntimeError):
    """The cluster did not start, a command failed, or a wait ran out."""


class SlurmUnavailable(SlurmError):
    """This machine cannot run the multi-node cluster: it cannot make network namespaces."""


#: scripts/slurm-setup.sh's exit code when it cannot make network namespaces.
EXIT_NO_NETNS = 3


def parse_record(line: str) -> dict[str, str]:
    """The fields of one ``scontrol show job|node -o`` line: ``{"JobId": "7", "JobState": ...}``,
    read as razorctl reads them (razor.backends.slurm_records.record_fields: a value runs up to
    the next `` Key=``, so ``OS=Linux 6.1 ...`` and ``TRES=cpu=1,node=1`` come out whole)."""
    return record_fields(line)


class SlurmCluster:
    """The test cluster of ``scripts/slurm-setup.sh``; :meth:`start` before anything else."""

    def __init__(self, setup_script: Path = SETUP_SCRIPT, slurm_dir: str | os.PathLike[str] | None = None,
                 start_timeout: float = 600, nodes: int = 1, hold: bool = False) -> None:
        self.setup_script = Path(setup_script)
        if slurm_dir is None:
            # $RAZOR_SLURM_DIR names the one-node cluster's folder, never the multi-node one's.
            slurm_dir = (os.environ.get("RAZOR_SLURM_DIR", "/tmp/razor-slurm") if nodes == 1
                         else f"/tmp/razor-slurm{nodes}")
        self.slurm_dir = Path(slurm_dir)
        self.nodes = nodes
        self.hold = hold
        self.start_timeout = start_timeout
        self.conf: Path | None = None
        #: Seconds the last :meth:`start` took (the set-up script, install included).
        self.startup_seconds: float = 0.0
        #: Job ids submitted through :meth:`sbatch`, in order.
        self.submitted: list[str] = []

    # ---- life cycle ------------------------------------------------------------------------------
    def _setup(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["RAZOR_SLURM_DIR"] = str(self.slurm_dir)
        env["RAZOR_SLURM_NODES"] = str(self.nodes)
        env.pop("RAZOR_SLURM_HOLDER", None)
        if self.hold:
            env["RAZOR_SLURM_HOLDER"] = str(os.getpid())
        try:
            return subprocess.run(["bash", str(self.setup_script), *args], env=env, text=True,
                                  capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise SlurmError(f"{self.setup_script.name} {' '.join(args)} ran past {timeout:.0f}s:\n"
                             f"{_text(e.stderr)[-4000:]}") from e

    def start(self) -> SlurmCluster:
        """Start the cluster (or find it running) and wait until its nodes are up."""
        t0 = time.monotonic()
        proc = self._setup("start", timeout=self.start_timeout)
        self.startup_seconds = time.monotonic() - t0
        if proc.returncode == EXIT_NO_NETNS and self.nodes > 1:
            raise SlurmUnavailable(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                                   else "network namespaces are not available here")
        lines = proc.stdout.strip().splitlines()
        last = lines[-1] if lines else ""
        m = re.fullmatch(r"export SLURM_CONF=(\S+)", last.strip())
        if proc.returncode != 0 or m is None:
            raise SlurmError(f"{self.setup_script} failed (exit {proc.returncode}):\n"
                             f"{proc.stderr[-4000:]}{proc.stdout[-1000:]}")
        self.conf = Path(m.group(1))
        return self

    def stop(self) -> None:
        """Cancel every job and stop the daemons (``scripts/slurm-setup.sh stop``); with ``hold``,
        only once no other holder is left."""
        proc = self._setup("stop", timeout=120)
        if proc.returncode != 0:
            raise SlurmError(f"{self.setup_script.name} stop failed:\n{proc.stderr[-4000:]}")

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        pass  # left running on purpose: see the module's docstring

    # ---- commands --------------------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """``os.environ`` with ``SLURM_CONF`` for this cluster, without the other ``SLURM_*``
        variables a surrounding allocation may have set (they would steer sbatch and srun)."""
        if self.conf is None:
            raise SlurmError("the cluster is not started: call start() first")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        if extra:
            env.update(extra)
        return env

    def run(self, *cmd: str | os.PathLike[str], check: bool = True, timeout: float = 60,
            cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command (``sbatch``, ``squeue``, ``razorctl`` ...) against this cluster; with
        ``check``, a non-zero exit raises :class:`SlurmError` with its output."""
        args = [os.fspath(c) for c in cmd]
        try:
            proc = subprocess.run(args, env=self.env(), text=True, capture_output=True,
                                  timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise SlurmError(f"{' '.join(args)} ran past {timeout:.0f}s") from e
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed (exit {proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, *args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
        """``sbatch --parsable ARGS``; returns the job id (and remembers it in ``submitted``)."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd).stdout.strip()
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {out!r}")
        self.submitted.append(job_id)
        return job_id

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = [str(j) for j in job_ids]
        if ids:
            self.run("scancel", *ids, check=False)

    # ---- state -----------------------------------------------------------------------------------
    def job(self, job_id: str | int) -> dict[str, str] | None:
        """The job's record from ``scontrol show job -o``; None when slurmctld does not know it
        (never submitted, or finished more than MinJobAge ago)."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr or "Invalid job id" in proc.stdout:
                return None
            raise SlurmError(f"scontrol show job {job_id} failed:\n{proc.stdout}{proc.stderr}")
        for line in proc.stdout.splitlines():
            fields = parse_record(line)
            if fields.get("JobId") == str(job_id):
                return fields
        return None

    def job_state(self, job_id: str | int) -> str:
        """``JobState`` of the job ("PENDING", "RUNNING", "COMPLETED" ...)."""
        rec = self.job(job_id)
        if rec is None:
            raise SlurmError(f"slurmctld does not know job {job_id}")
        return rec["JobState"]

    def wait_job(self, job_id: str | int, timeout: float = 60,
                 states: Iterable[str] = FINAL_STATES) -> str:
        """Wait until the job's ``JobState`` is one of ``states`` (by default a final state) and
        return it; :class:`SlurmError` after ``timeout`` seconds."""
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout
        rec: dict[str, str] | None = None
        while True:
            rec = self.job(job_id)
            if rec is not None and rec.get("JobState") in wanted:
                return rec["JobState"]
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        raise SlurmError(f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s; "
                         f"its record: {rec}\n{self.log_tail()}")

    def wait_until(self, job_id: str | int, predicate: Callable[[dict[str, str]], bool],
                   timeout: float = 60, what: str = "condition") -> dict[str, str]:
        """Wait until ``predicate(record)`` is true for the job's record; return the record."""
        deadline = time.monotonic() + timeout
        rec: dict[str, str] | None = None
        while True:
            rec = self.job(job_id)
            if rec is not None and predicate(rec):
                return rec
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        raise SlurmError(f"job {job_id}: no {what} after {timeout:.0f}s; its record: {rec}\n"
                         f"{self.log_tail()}")

    def wait_forgotten(self, job_id: str | int, timeout: float = 150) -> None:
        """Wait until slurmctld no longer knows the (finished) job: MinJobAge after it ended, at
        slurmctld's next purge of old jobs (once a minute)."""
        deadline = time.monotonic() + timeout
        while True:
            # Not job(): an array's id also lists its elements, each a job of its own id.
            proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
            if proc.returncode != 0 or not proc.stdout.strip():
                return
            if time.monotonic() >= deadline:
                raise SlurmError(f"slurmctld still knows job {job_id} after {timeout:.0f}s: {proc.stdout}")
            time.sleep(1)

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` from ``sinfo -N`` ("idle", "mixed", "allocated", "down*" ...)."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T").stdout
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def node_addrs(self) -> dict[str, str]:
        """``{node: NodeAddr}`` from ``scontrol show node``."""
        out = self.run("scontrol", "show", "node", "-o").stdout
        records = [parse_record(line) for line in out.splitlines() if line.strip()]
        return {r["NodeName"]: r["NodeAddr"] for r in records if "NodeName" in r}

    def log_tail(self, lines: int = 20) -> str:
        """The end of slurmctld's and slurmd's logs, for error messages."""
        parts = []
        for log in sorted((self.slurm_dir / "log").glob("slurm*.log")):
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"---- {log} ----\n" + "\n".join(tail))
        return "\n".join(parts)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
