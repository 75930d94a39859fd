"""Fixtures for the tests on a real one-node Kubernetes (marker ``node``).

``kube``: one :class:`kube_node.Cluster` for the session: the control plane with kube-scheduler
and one node whose kubelet runs pods in containerd (tests/kube_node.py says what is real and what
pretends). The operator image and the CPU trainer image are built with podman exactly as
tests/images builds them (podman's layer cache makes that seconds when tests/images ran first)
and imported into the node's containerd.

``razor``: ``helm install razor charts/razor`` into ``razor-system`` with that operator image and,
as the cluster's default CPU image for jobs, that trainer image; waits until the operator's pod is
Ready. ``namespace``: a fresh namespace per test.

Every test under tests/node gets the ``node`` marker (tests/conftest.py gives it). The folder is a
package, like tests/k8s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helm.conftest import CHART, Helm, find_helm
from images.conftest import BASE_SCRIPT, OPERATOR_TAG, TRAINER_TAG, WHEELS_SCRIPT, _script, build
from k8s.conftest import CRD_FILE, namespace_name
from kube_node import ROOT, Cluster

RELEASE, SYSTEM_NS = "razor", "razor-system"
_report: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _report:
        terminalreporter.write_line("node: " + ", ".join(f"{k} {v:.1f}s" for k, v in _report.items()))


@pytest.fixture(scope="session")
def node_images() -> tuple[str, str]:
    """The operator image and the CPU trainer image, built with podman (cached layers)."""
    t0 = time.monotonic()
    base = _script(BASE_SCRIPT, timeout=1800)
    wheels = Path(_script(WHEELS_SCRIPT, timeout=3600))
    build("images/operator/Dockerfile", OPERATOR_TAG, base, wheels)
    build("images/trainer/Dockerfile", TRAINER_TAG, base, wheels, "VARIANT=cpu")
    _report["images"] = time.monotonic() - t0
    return OPERATOR_TAG, TRAINER_TAG


@pytest.fixture(scope="session")
def kube(node_images: tuple[str, str]) -> Iterator[Cluster]:
    with Cluster(crds=[CRD_FILE], images=list(node_images)) as c:
        _report.update({f"cluster {k}": v for k, v in c.timings.items()})
        yield c


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))


def razorctl_argv() -> list[str]:
    return [sys.executable, "-m", "razor.cli"]


def razor_env(kube: Cluster) -> dict[str, str]:
    """This environment with the cluster's (admin) kubeconfig, and razorctl's venv on PATH."""
    env = kube.env(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def razorctl(kube: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """razorctl as a user runs it, against the cluster."""
    return subprocess.run([*razorctl_argv(), *args], cwd=ROOT, env=razor_env(kube), capture_output=True,
                          text=True, timeout=timeout)


def get_json(kube: Cluster, *args: str) -> dict | None:
    out = kube.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="session")
def razor(kube: Cluster, helm: Helm, node_images: tuple[str, str]) -> Iterator[subprocess.CompletedProcess]:
    """The chart installed as a user would, with the podman-built images (never pulled), into a
    namespace that enforces the restricted Pod Security Standard."""
    operator, trainer = node_images
    repo, tag = operator.rsplit(":", 1)
    t0 = time.monotonic()
    # The operator's namespace enforces the restricted Pod Security Standard, as a careful admin's would.
    kube.kubectl("create", "namespace", SYSTEM_NS)
    kube.kubectl("label", "namespace", SYSTEM_NS, "pod-security.kubernetes.io/enforce=restricted")
    out = helm.run("install", RELEASE, str(CHART), "--namespace", SYSTEM_NS,
                   "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
                   "--set", "image.pullPolicy=Never", "--set", f"defaults.cpuImage={trainer}",
                   "--wait", "--timeout", "180s", cluster=kube.cp, timeout=240)
    _report["helm install --wait"] = time.monotonic() - t0
    yield out
    helm.run("uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait", cluster=kube.cp, check=False)


@pytest.fixture
def namespace(kube: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = namespace_name(request.node.name)
    kube.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while kube.cp.request(f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name} after 30s"
        time.sleep(0.1)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
