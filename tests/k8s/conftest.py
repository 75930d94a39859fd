"""Fixtures for the tests against a real Kubernetes control plane (marker ``k8s``).

``cluster``: one :class:`kube_cluster.ControlPlane` for the whole session (etcd, kube-apiserver,
kube-controller-manager on loopback) with ``crds/razorjob.yaml`` applied (``kubectl apply -f``) and
Established before the controller manager starts, so its garbage collector knows RazorJobs.
``namespace``: a fresh namespace per test, deleted afterwards without waiting.

Every test under tests/k8s gets the ``k8s`` marker (tests/conftest.py gives it): ``pytest -m k8s`` runs them, ``-m "not k8s"``
leaves them out.

This folder is a package (``__init__.py``): without it this file would be imported as the module
``conftest`` and replace tests/conftest.py in ``sys.modules``, and ``from conftest import ...`` in
the other test modules would fail.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kube_cluster import ROOT, ControlPlane

CRD_FILE = ROOT / "crds" / "razorjob.yaml"
#: Stand-ins for Volcano's and the coscheduler's PodGroup CRDs (their group/version/kind and
#: spec.minMember, nothing more: the real ones are not available here), applied with the RazorJob
#: CRD before the controller manager starts, so that its garbage collector follows them at once.
GANG_CRDS = Path(__file__).parent / "gang-crds.yaml"
#: The node lifecycle controller looks at the nodes every second and takes one whose heartbeats
#: stopped 5 s ago for lost (50 s by default): there is no kubelet here, only the Node objects of
#: tests/k8s/test_operator.py and the heartbeats the tests post for them.
NODE_MONITOR_FLAGS = ("--node-monitor-period=1s", "--node-monitor-grace-period=5s")
CRD_NAME = "razorjobs.razor.dev"

_startup: list[float] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _startup:
        terminalreporter.write_line(f"k8s control plane started in {_startup[0]:.1f}s "
                                    "(etcd, kube-apiserver, CRD, kube-controller-manager)")


@pytest.fixture(scope="session")
def cluster() -> Iterator[ControlPlane]:
    """A running control plane with the RazorJob CRD Established."""
    with ControlPlane(crds=[CRD_FILE, GANG_CRDS], controller_flags=NODE_MONITOR_FLAGS) as cp:
        _startup.append(cp.startup_seconds)
        established = cp.kubectl("get", "crd", CRD_NAME, "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Established')].status}")
        assert established.stdout == "True", established
        yield cp


def namespace_name(test_name: str) -> str:
    """A DNS-label namespace name from a test name, unique per call (<= 63 characters)."""
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    base = re.sub(r"^[^a-z]+", "", base)[:50].rstrip("-") or "t"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; ready for pods (its ``default`` ServiceAccount,
    made by the controller manager, exists). Deleted afterwards, not waited for."""
    name = namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.request(f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name} after 30s"
        time.sleep(0.05)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
