"""Fixtures for the tests against a real SLURM cluster (marker ``slurm``).

``slurm``: one :class:`slurm_cluster.SlurmCluster` for the whole session, started (or found
running) by ``scripts/slurm-setup.sh``: slurmctld + slurmd (Debian's slurm-wlm) and a private
munged on loopback, one node (this host) in the default partition ``debug``. It is left running
afterwards (``scripts/slurm-setup.sh stop`` stops it).

After each test, the jobs it submitted through ``slurm.sbatch`` that have not finished are
cancelled, so a failed test leaves no job holding the node's CPUs.

Every test under tests/slurm gets the ``slurm`` marker (tests/conftest.py gives it): ``pytest -m slurm`` runs them,
``-m "not slurm"`` leaves them out.

This folder is a package (``__init__.py``), like tests/k8s: without it this file would be imported
as the module ``conftest`` and replace tests/conftest.py in ``sys.modules``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_cluster import FINAL_STATES, SlurmCluster


_startup: list[float] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _startup:
        terminalreporter.write_line(f"slurm cluster ready in {_startup[0]:.1f}s "
                                    "(scripts/slurm-setup.sh: munged, slurmctld, slurmd)")


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    """The running test cluster; ``slurm.env()`` has its ``SLURM_CONF``."""
    cluster = SlurmCluster().start()
    _startup.append(cluster.startup_seconds)
    return cluster


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Cancel what a test submitted with ``slurm.sbatch`` and left unfinished."""
    if "slurm" not in request.fixturenames:
        yield
        return
    cluster: SlurmCluster = request.getfixturevalue("slurm")
    before = len(cluster.submitted)
    yield
    leftover = []
    for job_id in cluster.submitted[before:]:
        rec = cluster.job(job_id)
        if rec is not None and rec.get("JobState") not in FINAL_STATES:
            leftover.append(job_id)
    cluster.cancel(leftover)
