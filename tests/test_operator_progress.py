"""The operator's progress endpoint without a cluster: who may report, what a report may say,
which report wins (the real TokenReviews are in tests/k8s/test_progress.py)."""

from __future__ import annotations

import importlib
import json
import urllib.error
import urllib.request

import pytest

progress = importlib.import_module("razor_operator.progress")
server = importlib.import_module("razor_operator.server")
handlers = importlib.import_module("razor_operator.handlers")
Refused, Rank = progress.Refused, progress.Rank

NS, SA = "ml", "default"
REVIEW = {"authenticated": True, "audiences": ["razor-operator"],
          "user": {"username": f"system:serviceaccount:{NS}:{SA}",
                   "extra": {progress.POD_NAME: ["kd-0"], progress.POD_UID: ["pod-uid"]}}}


def rank_pod(**meta) -> dict:
    base = {"name": "kd-0", "namespace": NS, "uid": "pod-uid",
            "labels": {"razor.dev/job-name": "kd", "razor.dev/node-rank": "0", "razor.dev/attempt": "2"},
            "ownerReferences": [{"apiVersion": "razor.dev/v1alpha1", "kind": "RazorJob", "name": "kd",
                                 "uid": "job-uid", "controller": True}]}
    return {"metadata": {**base, **meta}, "spec": {}}


def refused(fn, *args) -> tuple[int, str]:
    with pytest.raises(Refused) as err:
        fn(*args)
    return err.value.status, str(err.value)


def test_the_caller_is_the_pod_the_token_is_bound_to():
    assert progress.caller(REVIEW) == progress.Caller(NS, SA, "kd-0", "pod-uid")
    assert refused(progress.caller, {"authenticated": False, "error": "token expired"}) == \
        (401, "the token is not valid for the audience razor-operator: token expired")
    assert refused(progress.caller, {**REVIEW, "audiences": ["https://kubernetes.default.svc"]})[0] == 401
    unbound = {**REVIEW, "user": {"username": f"system:serviceaccount:{NS}:{SA}"}}
    assert refused(progress.caller, unbound) == \
        (403, f"system:serviceaccount:{NS}:{SA} is not a pod: only a RazorJob's pods report progress")
    assert refused(progress.caller, {**REVIEW, "user": {**REVIEW["user"], "username": "alice"}})[0] == 403
    assert refused(progress.bearer, None)[0] == refused(progress.bearer, "Basic abc")[0] == 401
    assert progress.bearer("Bearer  tok ") == "tok"


def test_only_a_rank_of_a_razorjob_is_one():
    who = progress.caller(REVIEW)
    assert progress.rank_of(rank_pod(), who) == ("kd", "job-uid", 0, 2)
    for pod, why in [
        (None, "pod ml/kd-0 does not exist"),
        (rank_pod(uid="newer"), "pod ml/kd-0 is not the pod the token was made for"),
        (rank_pod(labels={}), "pod ml/kd-0 is no rank of a RazorJob"),
        (rank_pod(ownerReferences=[]), "pod ml/kd-0 is no rank of a RazorJob"),
        (rank_pod(ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "kd", "uid": "x",
                                    "controller": True}]), "pod ml/kd-0 is no rank of a RazorJob"),
        (rank_pod(name="kd-7"), "pod ml/kd-0 is no rank of a RazorJob"),  # a name not its rank's
    ]:
        assert refused(progress.rank_of, pod, who) == (403, why)
    other_sa = {**rank_pod(), "spec": {"serviceAccountName": "trainer"}}
    assert refused(progress.rank_of, other_sa, who) == (403, "pod ml/kd-0 does not run as default")


def test_a_report_keeps_the_known_fields_and_gets_a_time():
    body = json.dumps({"progress": {"stage": "train", "epoch": 2, "epochs": 5, "percent": 43.5, "etaSeconds": 80,
                                    "metrics": {"loss": 0.2}, "samplesPerSecond": 512, "step": None}}).encode()
    assert progress.parse_body(body, now=1_796_104_800) == {
        "stage": "train", "epoch": 2, "epochs": 5, "percent": 43.5, "etaSeconds": 80, "metrics": {"loss": 0.2},
        "samplesPerSecond": 512, "lastUpdateTime": "2026-12-01T06:00:00Z"}
    timed = progress.parse_body(b'{"progress": {"lastUpdateTime": "2026-12-01T07:00:00.5+01:00"}}')
    assert timed == {"lastUpdateTime": "2026-12-01T06:00:00Z"}
    many = {"progress": {"metrics": {f"m{i}": i for i in range(33)}}}
    assert refused(progress.parse_body, json.dumps(many).encode()) == \
        (400, "progress.metrics: at most 32 metrics, not 33")
    assert refused(progress.parse_body, b'{"progress": {"stage": "' + b"x" * 65 + b'"}}')[0] == 400
    assert refused(progress.parse_body, b'{"progress": {"etaSeconds": Infinity}}')[0] == 400


def job(phase="Running", attempt=2, old=None, uid="job-uid") -> dict:
    status = {"phase": phase, "attempt": attempt}
    if old is not None:
        status["progress"] = old
    return {"metadata": {"name": "kd", "namespace": NS, "uid": uid}, "status": status}


RANK = Rank(NS, "kd", "job-uid", 0, 2, "kd-0")


def test_the_newest_report_of_the_running_attempt_wins():
    new = {"epoch": 3, "metrics": {"loss": 0.1}, "lastUpdateTime": "2026-12-01T06:01:00Z"}
    old = {"epoch": 2, "step": 5, "metrics": {"loss": 0.2, "acc": 0.5}, "lastUpdateTime": "2026-12-01T06:00:00Z",
           "attempt": 2}
    patch, why = progress.progress_patch(job(old=old), RANK, new)
    # A merge patch: what the new report lacks goes (as null), down to the metrics.
    assert why == "stored" and patch == {"progress": {
        "step": None, "epoch": 3, "metrics": {"acc": None, "loss": 0.1}, "lastUpdateTime": "2026-12-01T06:01:00Z",
        "attempt": 2}}
    assert progress.progress_patch(job(old={**old, "lastUpdateTime": "2026-12-01T07:00:00Z"}), RANK, new) == \
        (None, "a later report is stored already")
    # A newer attempt's report replaces the older attempt's, whatever its clock says.
    patch, _ = progress.progress_patch(job(old={**old, "attempt": 1, "lastUpdateTime": "2027-01-01T00:00:00Z"}),
                                       RANK, new)
    assert patch["progress"]["attempt"] == 2
    assert progress.progress_patch(job(attempt=3), RANK, new) == (None, "attempt 2 reported, attempt 3 runs")
    assert progress.progress_patch(job(phase="Succeeded"), RANK, new) == (None, "RazorJob ml/kd has succeeded")
    assert progress.progress_patch(job(uid="other"), RANK, new)[0] is None


class FakeApi:
    def __init__(self):
        self.reviews, self.patches = 0, []
        self.job = job()

    def token_review(self, token, audiences):
        self.reviews += 1
        assert audiences == ["razor-operator"]
        return REVIEW if token == "good" else {"authenticated": False}

    def find_pod(self, namespace, name):
        return rank_pod() if (namespace, name) == (NS, "kd-0") else None

    def get_job(self, namespace, name):
        return self.job

    def patch_status(self, namespace, name, status):
        self.patches.append((namespace, name, status))


def test_the_receiver_trusts_a_verified_token_for_a_while():
    api, now = FakeApi(), [0.0]
    receiver = progress.Receiver(api, trust_seconds=60, clock=lambda: now[0])
    body = b'{"progress": {"epoch": 1, "lastUpdateTime": "2026-12-01T06:00:00Z"}}'
    assert receiver.receive("Bearer good", body) == (200, {"status": "stored", "job": "ml/kd", "attempt": 2})
    assert receiver.receive("Bearer good", body)[0] == 200 and api.reviews == 1
    now[0] = 61.0
    receiver.receive("Bearer good", body)
    assert api.reviews == 2 and len(api.patches) == 3
    assert receiver.receive("Bearer bad", body)[0] == 401
    assert receiver.receive("Bearer good", b"{}")[0] == 400 and len(api.patches) == 3


def test_the_server_routes_and_refuses_what_it_does_not_serve():
    api = FakeApi()
    routes = {("POST", "/progress"): server.progress_route(progress.Receiver(api)),
              ("GET", "/metrics"): server.metrics_route}
    (srv,) = server.serve([("127.0.0.1", 0, routes)])
    base = f"http://127.0.0.1:{srv.server_port}"
    try:
        def call(path, data=None, headers=None):
            req = urllib.request.Request(base + path, data=data, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        code, text = call("/metrics")
        assert code == 200 and b"razor_reconcile_seconds" in text
        assert call("/progress")[0] == 405 and call("/nothing")[0] == 404
        code, text = call("/progress", b'{"progress": {"epoch": 1}}', {"Authorization": "Bearer good"})
        assert code == 200 and json.loads(text)["status"] == "stored"
        assert call("/progress", b"x" * 20000, {"Authorization": "Bearer good"})[0] == 413
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_reconcile_never_writes_the_reported_progress():
    """The operator's status patch leaves status.progress to the reports: a patch carrying the
    progress it read would undo a report that came in meanwhile."""
    class World:
        progress_url = None

        class api:  # noqa: N801
            patches: list = []

            @classmethod
            def patch_status(cls, ns, name, status):
                cls.patches.append(status)

    from razor.spec import parse_job
    from conftest import job_doc

    rec = importlib.import_module("razor_operator.reconcile")
    body = {"metadata": {"name": "kd", "generation": 1},
            "status": {"phase": "Pending", "progress": {"epoch": 1}}}
    d = rec.Decision(status={"phase": "Running", "progress": {"epoch": 1}})
    handlers._apply(World, body, parse_job(job_doc("kd", config="c.yaml")), "ml", "uid", d, None)
    assert World.api.patches == [{"phase": "Running", "observedGeneration": 1}]
    World.api.patches.clear()
    d = rec.Decision(status={"phase": "Pending"})  # progress is not the reconcile's to drop either
    handlers._apply(World, body, parse_job(job_doc("kd", config="c.yaml")), "ml", "uid", d, None)
    assert World.api.patches == []
