"""Fixtures for the tests against a real SLURM cluster (marker ``slurm``).

``slurm``: one :class:`slurm_cluster.SlurmCluster` for the whole session, started (or found
running) by ``scripts/slurm-setup.sh``: slurmctld + slurmd (Debian's slurm-wlm) and a private
munged on loopback, one node (this host) in the default partition ``debug``. It is left running
afterwards (``scripts/slurm-setup.sh stop`` stops it).

``slurm_two_nodes``: a second, separate cluster for the tests that need two nodes
(``scripts/slurm-setup.sh`` with ``RAZOR_SLURM_NODES=2``: under /tmp/razor-slurm2, ClusterName
razor2, its own munged and ports): node1 and node2, each a slurmd in its own network namespace
with its own address and hostname. Started only when a test asks for it, and stopped when the
session ends, namespaces and links included (unless another session that started it is still
running). Skipped, with the reason, only where network namespaces cannot be made.

After each test, the jobs it submitted through ``sbatch`` of either cluster (or recorded in its
``submitted``) that have not finished are cancelled, so a failed test leaves no job holding CPUs.

Every test under tests/slurm gets the ``slurm`` marker (tests/conftest.py gives it): ``pytest -m slurm`` runs them,
``-m "not slurm"`` leaves them out.

This folder is a package (``__init__.py``), like tests/k8s: without it this file would be imported
as the module ``conftest`` and replace tests/conftest.py in ``sys.modules``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from slurm_cluster import FINAL_STATES, SlurmCluster, SlurmError, SlurmUnavailable


_startup: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if "slurm" in _startup:
        terminalreporter.write_line(f"slurm cluster ready in {_startup['slurm']:.1f}s "
                                    "(scripts/slurm-setup.sh: munged, slurmctld, slurmd)")
    if "slurm_two_nodes" in _startup:
        terminalreporter.write_line(f"two-node slurm cluster ready in {_startup['slurm_two_nodes']:.1f}s "
                                    "(RAZOR_SLURM_NODES=2 scripts/slurm-setup.sh: network namespaces, "
                                    "munged, slurmctld, 2 slurmd)")


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    """The running test cluster; ``slurm.env()`` has its ``SLURM_CONF``."""
    cluster = SlurmCluster().start()
    _startup["slurm"] = cluster.startup_seconds
    return cluster


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """The two-node test cluster (node1, node2 in network namespaces); ``.env()`` has its
    ``SLURM_CONF``. Stopped at the end of the session."""
    cluster = SlurmCluster(nodes=2, hold=True)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        pytest.skip(f"no two-node SLURM cluster on this machine: {exc}")
    except SlurmError:
        cluster.stop()  # what start made (namespaces, daemons) goes
        raise
    _startup["slurm_two_nodes"] = cluster.startup_seconds
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Cancel what a test submitted (``cluster.submitted``) and left unfinished."""
    clusters: list[SlurmCluster] = [request.getfixturevalue(name) for name in ("slurm", "slurm_two_nodes")
                                    if name in request.fixturenames]
    before = [len(c.submitted) for c in clusters]
    yield
    for cluster, n in zip(clusters, before):
        leftover = []
        for job_id in cluster.submitted[n:]:
            rec = cluster.job(job_id)
            if rec is not None and rec.get("JobState") not in FINAL_STATES:
                leftover.append(job_id)
        cluster.cancel(leftover)
