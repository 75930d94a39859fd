"""Prometheus metrics of the operator: jobs by phase, reconcile latency, pods created."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("razor_jobs", "RazorJobs by phase", ["phase"])
RECONCILE = Histogram("razor_reconcile_seconds", "Time to reconcile one RazorJob",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PODS_CREATED = Counter("razor_pods_created_total", "Pods created by the operator")

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _publish() -> None:
    counts: dict[str, int] = {}
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase in ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"):
        JOBS.labels(phase=phase).set(counts.get(phase, 0))


def observe(namespace: str, name: str, phase: str | None, seconds: float) -> None:
    RECONCILE.observe(seconds)
    with _lock:
        _phases[(namespace, name)] = phase or "Pending"
        _publish()


def forget(namespace: str, name: str) -> None:
    with _lock:
        _phases.pop((namespace, name), None)
        _publish()
