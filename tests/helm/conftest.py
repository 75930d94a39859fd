"""Fixtures for the Helm chart's tests (marker ``helm``): a real helm, and a real control plane.

``helm``: a :class:`Helm` running the real binary, ``$RAZOR_HELM`` if set, else the last line
``scripts/helm-binary.sh`` prints (it builds helm from the Go module proxy once and caches it),
with its own config, cache and data folders (nothing in ~/.config/helm or ~/.cache/helm).

``cluster``: a :class:`kube_cluster.ControlPlane` for the session, *without* the RazorJob CRD,
unlike tests/k8s's ``cluster``: here ``helm install`` installs the CRD from the chart's crds/
(helm skips a CRD that exists already, which would prove nothing). ``namespace`` is tests/k8s's
fixture, imported: it asks for ``cluster`` and gets this one.

Every test under tests/helm gets the ``helm`` marker: ``pytest -m helm`` runs them, ``-m "not
helm"`` leaves them out. This folder is a package, like tests/k8s (see tests/k8s/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from k8s.conftest import GANG_CRDS, namespace  # noqa: F401  (namespace: a fixture, reused: it asks for `cluster` below)
from kube_cluster import ROOT, ControlPlane

CHART = ROOT / "charts" / "razor"
HELM_SCRIPT = ROOT / "scripts" / "helm-binary.sh"

_startup: list[float] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _startup:
        terminalreporter.write_line(f"helm tests: control plane started in {_startup[0]:.1f}s "
                                    "(etcd, kube-apiserver, kube-controller-manager; no CRD)")


def find_helm(timeout: float = 3600) -> Path:
    """``$RAZOR_HELM``, else the binary ``scripts/helm-binary.sh`` builds (or has cached)."""
    if os.environ.get("RAZOR_HELM"):
        path = Path(os.environ["RAZOR_HELM"])
    else:
        out = subprocess.run([str(HELM_SCRIPT)], capture_output=True, text=True, timeout=timeout,
                             cwd=ROOT)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            pytest.fail(f"{HELM_SCRIPT} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
        path = Path(lines[-1])
    assert os.access(path, os.X_OK), f"helm not found or not executable: {path}"
    return path


class Helm:
    """The real helm binary, isolated from the user's helm configuration."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = dict(os.environ)
        for var, sub in (("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache"),
                         ("HELM_DATA_HOME", "data")):
            self.env[var] = str(home / sub)
        self.env.pop("KUBECONFIG", None)   # a test names its cluster, or has none
        self.env["HELM_NAMESPACE"] = "default"

    def run(self, *args: str, cluster: ControlPlane | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``helm ARGS``; with ``cluster``, against it (its kubeconfig). ``check``: exit 0 expected."""
        env = cluster.env(self.env) if cluster is not None else self.env
        argv = [str(self.binary), *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if check:
            assert out.returncode == 0, (f"{' '.join(argv)} exited {out.returncode}:\n"
                                         f"{out.stderr}\n{out.stdout[-4000:]}")
        return out

    def template(self, *args: str, values: Sequence[str] = (), release: str = "razor",
                 ns: str = "razor-system") -> list[dict]:
        """The objects ``helm template`` renders (``values``: ``--set`` arguments)."""
        sets = [a for v in values for a in ("--set", v)]
        out = self.run("template", release, str(CHART), "--namespace", ns, *sets, *args)
        return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[ControlPlane]:
    """A running control plane without razor's CRD (the chart brings it), with the stand-ins of
    Volcano's and the coscheduler's PodGroup CRDs (tests/k8s/gang-crds.yaml): ``kubectl auth
    can-i`` resolves a resource through discovery, and the chart grants create on their podgroups."""
    with ControlPlane(crds=[GANG_CRDS]) as cp:
        _startup.append(cp.startup_seconds)
        yield cp
