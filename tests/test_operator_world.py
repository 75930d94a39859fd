"""The operator's queue and clock alone (operator/razor_operator/world.py), with a stand-in
reconcile: the coalescing and the timing users rely on at scale, without a cluster."""

from __future__ import annotations

import importlib
import threading
import time

from conftest import eventually

world = importlib.import_module("razor_operator.world")
Decision = importlib.import_module("razor_operator.reconcile").Decision


def test_requests_during_a_reconcile_collapse_into_one_more_pass():
    started, release, runs = threading.Event(), threading.Event(), []

    def run(ns: str, name: str):
        runs.append((ns, name))
        if len(runs) == 1:
            started.set()
            release.wait(10)
        return None

    queue = world.Queue(run, world.Clock(lambda ns, name: None))
    first = threading.Thread(target=queue.request, args=("ml", "kd"))
    first.start()
    assert started.wait(10)
    for _ in range(50):  # a 256-node job's pod events, say: they only mark the job dirty
        queue.request("ml", "kd")
    release.set()
    first.join(10)
    assert runs == [("ml", "kd"), ("ml", "kd")]


def test_a_decision_that_asks_to_come_back_is_reconciled_again_by_the_clock():
    runs: list[float] = []
    holder: dict = {}

    def run(ns: str, name: str):
        runs.append(time.monotonic())
        return Decision(requeue_after=0.3) if len(runs) == 1 else None

    clock = world.Clock(lambda ns, name: holder["queue"].request(ns, name))
    holder["queue"] = world.Queue(run, clock)
    holder["queue"].request("ml", "kd")
    eventually(lambda: len(runs) == 2, 5, "the timed reconcile")
    assert runs[1] - runs[0] >= 0.3


def test_api_errors_are_retried_then_tried_again_later(monkeypatch):
    monkeypatch.setattr(world, "RETRIES", 2)
    later: list[tuple[str, str, float]] = []

    class Clock:
        def later(self, ns: str, name: str, seconds: float) -> None:
            later.append((ns, name, seconds))

    calls = []

    def run(ns: str, name: str):
        calls.append(1)
        raise RuntimeError("the API server is down")

    world.Queue(run, Clock()).request("ml", "kd")
    assert len(calls) == 2 and later == [("ml", "kd", world.RETRY_LATER)]
