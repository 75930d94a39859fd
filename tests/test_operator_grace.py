"""The operator deletes a job's pods with the job's grace (spec.terminationGracePeriodSeconds),
the one razor.node's RAZOR_STOP_GRACE fits within: a narrow test of handlers.World against a
recording stand-in for the Kubernetes client (the real API server is in tests/k8s)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from kubernetes import client

from conftest import job_doc
from razor.spec import parse_job

handlers = importlib.import_module("razor_operator.handlers")
reconcile = importlib.import_module("razor_operator.reconcile")
ports = importlib.import_module("razor_operator.ports")


class RecordingCore:
    """Records CoreV1Api.delete_namespaced_pod calls."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str, Any]] = []

    def delete_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> None:
        self.deleted.append((namespace, name, kw.get("grace_period_seconds")))


@pytest.mark.parametrize("spec, grace", [({}, 120), ({"terminationGracePeriodSeconds": 45}, 45)])
def test_a_gang_restart_deletes_the_pods_with_the_jobs_grace(spec: dict, grace: int):
    world = handlers.World(client.ApiClient(client.Configuration()), ports.PortIndex(), workers=1)
    world.api.core = RecordingCore()
    job = parse_job(job_doc("kd", config="c.yaml", nnodes=2, **spec))
    decision = reconcile.Decision(delete_pods=["kd-0", "kd-1"], status={"phase": "Restarting"})
    body = {"metadata": {"name": "kd", "namespace": "ml"}, "status": {"phase": "Restarting"}}
    handlers._apply(world, body, job, "ml", "uid-1", decision, None)
    assert world.api.core.deleted == [("ml", "kd-0", grace), ("ml", "kd-1", grace)]
