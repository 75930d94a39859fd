"""The operator's decisions, rule by rule, without a cluster (the real one is in tests/k8s)."""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta, timezone

from conftest import job_doc
from razor.spec import parse_job

rec = importlib.import_module("razor_operator.reconcile")
PodState, decide = rec.PodState, rec.decide
job_event_matters, pod_event_matters = rec.job_event_matters, rec.pod_event_matters
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)


def job(**spec):
    return parse_job(job_doc("kd", config="c.yaml", nnodes=4, **spec))


def pods(phase="Running", attempt=1, n=4, **overrides):
    out = [PodState(f"kd-{r}", r, attempt, phase) for r in range(n)]
    for rank, state in overrides.items():
        out[int(rank.removeprefix("r"))] = state
    return out


def cond(status, kind):
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def test_a_new_job_gets_its_service_and_every_pod_at_once():
    d = decide(job(), None, [], NOW, service_exists=False)
    assert d.create_service and d.create_ranks == [0, 1, 2, 3]
    assert d.status["attempt"] == 1 and d.status["restarts"] == 0
    assert cond(d.status, "Created")["status"] == "True"
    assert ("Normal", "Created", "created service kd and 4 pod(s)") in d.events


def test_the_status_names_the_pods_being_created():
    d = decide(job(), None, [], NOW, service_exists=False)
    assert d.status["ranks"] == [{"rank": r, "pod": f"kd-{r}", "phase": "Pending"} for r in range(4)]
    assert d.status["message"] == "waiting for 4 of 4 rank(s) to run (attempt 1)"


def test_missing_ranks_join_the_ones_that_exist():
    d = decide(job(), {"attempt": 1, "phase": "Pending"}, pods("Running")[1:3], NOW)
    assert d.create_ranks == [0, 3]
    assert [(r["rank"], r["phase"]) for r in d.status["ranks"]] == [
        (0, "Pending"), (1, "Running"), (2, "Running"), (3, "Pending")]


def test_created_twice_creates_nothing_more():
    d = decide(job(), {"attempt": 1, "phase": "Pending"}, pods("Pending"), NOW)
    assert not d.create_service and d.create_ranks == [] and d.delete_pods == []


def test_all_ranks_running_is_running():
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Pending"}, pods("Running"), NOW)
    assert d.status["phase"] == "Running" and d.status["startTime"] == "2026-11-27T12:00:00Z"
    assert cond(d.status, "Running")["status"] == "True"
    assert [r["phase"] for r in d.status["ranks"]] == ["Running"] * 4


def test_a_failed_rank_restarts_the_whole_gang():
    failed = PodState("kd-2", 2, 1, "Failed", 137, "OOMKilled")
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r2=failed), NOW)
    assert d.status["phase"] == "Restarting" and d.status["attempt"] == 2 and d.status["restarts"] == 1
    assert sorted(d.delete_pods) == ["kd-0", "kd-1", "kd-2", "kd-3"]
    assert d.create_ranks == [], "the next attempt waits until the old pods are gone"
    msg = d.status["message"]
    assert "rank 2 (pod kd-2) exited with code 137 (OOMKilled)" in msg and "attempt 2" in msg
    assert cond(d.status, "Restarting")["status"] == "True"
    assert d.events[0][:2] == ("Warning", "Restarting")


def test_the_next_attempt_starts_once_the_old_pods_are_gone_and_the_backoff_passed():
    failed = PodState("kd-2", 2, 1, "Failed", 137, "OOMKilled")
    st = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r2=failed), NOW).status
    assert st["nextAttemptTime"] == "2026-11-27T12:00:10Z"  # restartBackoffSeconds 10
    d = decide(job(), st, pods("Failed", attempt=1, n=2), NOW)  # two old pods still there
    assert sorted(d.delete_pods) == ["kd-0", "kd-1"] and d.create_ranks == []
    d = decide(job(), st, [], NOW + timedelta(seconds=4))  # gone, but the backoff runs 6 s more
    assert d.create_ranks == [] and d.requeue_after == 6 and d.status["phase"] == "Restarting"
    d = decide(job(), st, [], NOW + timedelta(seconds=10))
    assert d.create_ranks == [0, 1, 2, 3] and d.status["phase"] == "Restarting"
    assert "nextAttemptTime" not in d.status
    d = decide(job(), d.status, pods("Running", attempt=2), NOW)
    assert d.status["phase"] == "Running"
    assert cond(d.status, "Restarting")["status"] == "False"


def test_backoff_limit_fails_the_job_naming_rank_and_code():
    failed = PodState("kd-1", 1, 3, "Failed", 1, "Error")
    d = decide(job(backoffLimit=2), {"attempt": 3, "restarts": 2, "phase": "Running"},
               pods(attempt=3, r1=failed), NOW)
    assert d.status["phase"] == "Failed"
    assert d.status["message"] == ("rank 1 (pod kd-1) exited with code 1 (Error); "
                                   "backoffLimit 2 reached after 2 restart(s)")
    assert d.status["completionTime"] == "2026-11-27T12:00:00Z"
    assert sorted(d.delete_pods) == ["kd-0", "kd-2", "kd-3"]  # nothing of a failed job runs on


def test_a_permanent_exit_code_fails_at_once():
    failed = PodState("kd-3", 3, 1, "Failed", 2, "Error")
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r3=failed), NOW)
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 0
    assert "exit code 2 is permanent" in d.status["message"]
    assert cond(d.status, "Failed")["reason"] == "PermanentFailure"


def test_all_ranks_succeeded():
    d = decide(job(), {"attempt": 1, "phase": "Running"}, pods("Succeeded"), NOW)
    assert d.status["phase"] == "Succeeded" and d.status["completionTime"] == "2026-11-27T12:00:00Z"
    assert d.delete_pods == [] and cond(d.status, "Succeeded")["status"] == "True"


def test_suspend_deletes_the_pods_and_resume_starts_again():
    d = decide(job(suspend=True), {"attempt": 1, "phase": "Running"}, pods(), NOW)
    assert d.status["phase"] == "Suspended" and len(d.delete_pods) == 4
    d = decide(job(suspend=False), d.status, [], NOW)
    assert d.create_ranks == [0, 1, 2, 3] and cond(d.status, "Suspended")["status"] == "False"


def test_ttl_after_finished():
    done = {"phase": "Succeeded", "completionTime": "2026-11-27T11:59:00Z"}
    d = decide(job(ttlSecondsAfterFinished=120), done, pods("Succeeded"), NOW)
    assert not d.delete_job and d.requeue_after == 60
    d = decide(job(ttlSecondsAfterFinished=30), done, pods("Succeeded"), NOW)
    assert d.delete_job


def test_the_ttl_clock_starts_when_the_job_finishes():
    running = {"attempt": 1, "phase": "Running", "startTime": "2026-11-27T11:00:00Z"}
    d = decide(job(ttlSecondsAfterFinished=30, activeDeadlineSeconds=7200), running, pods("Succeeded"), NOW)
    assert d.status["phase"] == "Succeeded" and d.requeue_after == 30
    d = decide(job(), running, pods("Running", r1=PodState("kd-1", 1, 1, "Failed", 2)), NOW)
    assert d.status["phase"] == "Failed" and d.requeue_after is None


def test_active_deadline():
    st = {"attempt": 1, "phase": "Running", "startTime": "2026-11-27T11:00:00Z"}
    d = decide(job(activeDeadlineSeconds=600), st, pods(), NOW)
    assert d.status["phase"] == "Failed" and len(d.delete_pods) == 4
    assert cond(d.status, "Failed")["reason"] == "DeadlineExceeded"
    d = decide(job(activeDeadlineSeconds=7200), st, pods(), NOW)
    assert d.status["phase"] == "Running" and d.requeue_after == 3600


def test_pod_state_from_a_kubelets_status():
    pod = {"metadata": {"name": "kd-2", "labels": {"razor.dev/node-rank": "2", "razor.dev/attempt": "1"}},
           "status": {"phase": "Failed", "containerStatuses": [
               {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    assert PodState.from_pod(pod) == PodState("kd-2", 2, 1, "Failed", 137, "OOMKilled")


def test_ports_never_shared_and_kept_across_restarts():
    PortIndex = importlib.import_module("razor_operator.ports").PortIndex
    ports = PortIndex(30000, 30002)
    assert ports.allocate("a", "one") == 30000 and ports.allocate("a", "two") == 30001
    assert ports.allocate("a", "one") == 30000
    again = PortIndex(30000, 30002)
    assert again.allocate("a", "two", recorded=30001) == 30001
    assert again.allocate("a", "three") == 30000


def test_memory_is_trimmed_only_after_work_and_a_quiet_moment():
    Trimmer = importlib.import_module("razor_operator.memory").Trimmer
    t = Trimmer(idle_seconds=0.05)
    assert not t.trim_if_idle()          # nothing happened yet
    t.touch()
    assert not t.trim_if_idle()          # still busy
    import time
    time.sleep(0.1)
    assert t.trim_if_idle() and not t.trim_if_idle()  # once per burst


def test_the_operators_own_status_patch_is_not_worth_a_reconcile():
    job_body = {"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "phase": "Running"}}
    assert not job_event_matters("MODIFIED", job_body)
    assert job_event_matters("MODIFIED", {"metadata": {"generation": 4}, "status": job_body["status"]})
    assert job_event_matters("MODIFIED", {"metadata": {"generation": 1}})  # never reconciled yet
    assert job_event_matters("ADDED", job_body)
    assert job_event_matters(None, job_body)  # the listing of a restarted operator


def test_a_just_created_pending_pod_is_not_worth_a_reconcile():
    assert not pod_event_matters("ADDED", {"metadata": {}, "status": {"phase": "Pending"}})
    assert not pod_event_matters("ADDED", {"metadata": {}})
    assert pod_event_matters("ADDED", {"metadata": {}, "status": {"phase": "Failed"}})
    assert pod_event_matters("ADDED", {"metadata": {"deletionTimestamp": "x"}, "status": {}})
    assert pod_event_matters("MODIFIED", {"metadata": {}, "status": {"phase": "Pending"}})
    assert pod_event_matters("DELETED", {"metadata": {}, "status": {"phase": "Pending"}})
    assert pod_event_matters(None, {"metadata": {}, "status": {"phase": "Pending"}})


# ---- lost nodes: pods deleted under a running gang, deletions no kubelet confirms -------------------

def lost_pod(rank=1, attempt=1, phase="Running", node="n1", disruption="DeletionByTaintManager",
             deleted_ago=0, grace=30):
    """A pod being deleted: its grace period ends (ended) ``deleted_ago`` seconds before NOW."""
    return PodState(f"kd-{rank}", rank, attempt, phase, deleting=True, node=node, uid=f"uid-{rank}",
                    deletion_timestamp=NOW - timedelta(seconds=deleted_ago), deletion_grace=grace,
                    disruption=disruption)


def test_pod_state_learns_its_node_its_deletion_and_its_disruption():
    pod = {"metadata": {"name": "kd-1", "uid": "u1", "labels": {"razor.dev/node-rank": "1", "razor.dev/attempt": "2"},
                        "deletionTimestamp": "2026-11-27T12:00:30Z", "deletionGracePeriodSeconds": 30},
           "spec": {"nodeName": "n1"},
           "status": {"phase": "Running", "conditions": [
               {"type": "Ready", "status": "False"},
               {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint"}]}}
    s = PodState.from_pod(pod)
    assert (s.node, s.uid, s.deleting, s.deletion_grace, s.disruption) == \
        ("n1", "u1", True, 30, "DeletionByTaintManager")
    assert s.deletion_timestamp == datetime(2026, 11, 27, 12, 0, 30, tzinfo=timezone.utc)
    pod["status"]["conditions"][1]["status"] = "False"
    assert PodState.from_pod(pod).disruption is None


def test_a_pod_evicted_from_a_lost_node_restarts_the_gang():
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r1=lost_pod(deleted_ago=-30)), NOW)
    assert d.status["phase"] == "Restarting" and d.status["attempt"] == 2 and d.status["restarts"] == 1
    assert sorted(d.delete_pods) == ["kd-0", "kd-2", "kd-3"], "the lost pod is being deleted already"
    assert d.create_ranks == [] and d.force_delete_pods == {}
    assert d.status["message"].startswith("rank 1 (pod kd-1) lost with node n1: evicted by the taint manager")
    assert "restarting all 4 rank(s) as attempt 2" in d.status["message"]
    assert cond(d.status, "Restarting")["reason"] == "NodeLost"
    assert d.requeue_after == 90, "its grace period ends in 30s, then 60s for its kubelet to confirm"
    assert {"rank": 1, "pod": "kd-1", "phase": "Running", "node": "n1"} in d.status["ranks"]


def test_other_disruptions_name_their_reason():
    for disruption, reason in [("PreemptionByScheduler", "Preempted"), ("EvictionByEvictionAPI", "Evicted"),
                               ("DeletionByPodGC", "NodeLost"), (None, "PodDeleted")]:
        d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"},
                   pods(r2=lost_pod(2, disruption=disruption, deleted_ago=-30)), NOW)
        assert d.status["phase"] == "Restarting" and cond(d.status, "Restarting")["reason"] == reason


def test_a_pod_gone_from_a_running_gang_restarts_it():
    st = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Pending"},
                pods(r3=PodState("kd-3", 3, 1, "Running", node="n3")), NOW).status
    assert st["phase"] == "Running"
    d = decide(job(), st, pods()[:3], NOW)  # kd-3 force-deleted by someone, or by the pod GC
    assert d.status["phase"] == "Restarting" and d.create_ranks == [] and d.status["restarts"] == 1
    assert d.status["message"].startswith("rank 3 (pod kd-3) lost with node n3: gone while the gang ran")
    assert cond(d.status, "Restarting")["reason"] == "PodLost"


def test_lost_ranks_do_not_count_against_the_backoff_limit():
    """A lost node, an eviction, a preemption is not the job's fault: restarted at once, not counted."""
    d = decide(job(backoffLimit=1), {"attempt": 2, "restarts": 1, "phase": "Running"},
               pods(attempt=2, r0=lost_pod(0, attempt=2, deleted_ago=-30)), NOW)
    assert d.status["phase"] == "Restarting" and d.status["attempt"] == 3
    assert (d.status["restarts"], d.status["countedRestarts"], d.status["disruptionRestarts"]) == (2, 1, 1)
    assert "nextAttemptTime" not in d.status, "a disruption restarts without a backoff"
    assert d.status["message"].startswith("rank 0 (pod kd-0) lost with node n1")
    assert d.status["message"].endswith("as attempt 3 (a disruption: not counted against backoffLimit)")


def test_a_pod_still_deleting_after_a_resume_is_waited_for_not_counted():
    going = [lost_pod(r, disruption=None, deleted_ago=-10) for r in range(4)]
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Suspended"}, going, NOW)
    assert d.status["phase"] == "Pending" and d.status["restarts"] == 0 and d.status["attempt"] == 1
    assert d.create_ranks == [] and d.delete_pods == []
    d = decide(job(), d.status, going[:2], NOW)
    assert d.create_ranks == [2, 3] and d.status["restarts"] == 0
    assert d.status["phase"] == "Pending", "a deleting pod does not run"


def test_a_deletion_no_kubelet_confirms_is_forced_after_the_bound():
    failed = PodState("kd-2", 2, 1, "Failed", 137, "OOMKilled")
    st = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r2=failed), NOW).status
    # kd-0 and kd-2 are gone; kd-1's node is lost: its grace period ended 59s ago, and nobody confirms
    old = [lost_pod(1, disruption=None, deleted_ago=59), lost_pod(3, disruption=None, deleted_ago=-20)]
    d = decide(job(), st, old, NOW)
    assert d.force_delete_pods == {} and d.create_ranks == [] and d.requeue_after == 1
    d = decide(job(), st, old, NOW + timedelta(seconds=1))
    assert d.force_delete_pods == {"kd-1": "uid-1"} and d.create_ranks == []
    note = "rank 1 (pod kd-1) lost with node n1: not confirmed deleted 60s after its grace period; force-deleted"
    assert ("Warning", "ForceDeleted", note) in d.events
    assert d.status["message"] == f"{note}; restarting all 4 rank(s) as attempt 2"
    assert d.status["phase"] == "Restarting" and d.requeue_after == 79  # kd-3's turn
    d = decide(job(), d.status, [], NOW + timedelta(seconds=10))  # both gone, the backoff passed
    assert d.create_ranks == [0, 1, 2, 3] and d.status["attempt"] == 2


def test_the_bound_is_node_lost_timeout_seconds_and_a_forced_pod_is_not_forced_again():
    st = {"attempt": 2, "restarts": 1, "phase": "Restarting"}
    d = decide(job(nodeLostTimeoutSeconds=5), st, [lost_pod(0, deleted_ago=5)], NOW)
    assert list(d.force_delete_pods) == ["kd-0"] and "deleted 5s after its grace period" in d.status["message"]
    d = decide(job(nodeLostTimeoutSeconds=5), st, [lost_pod(0, deleted_ago=600, grace=0)], NOW)
    assert d.force_delete_pods == {} and d.events == [], "forced already: a finalizer holds it, not a kubelet"


def test_a_finished_or_suspended_jobs_lost_pods_are_forced_too():
    done = {"attempt": 1, "phase": "Failed", "message": "m", "completionTime": "2026-11-27T11:00:00Z"}
    d = decide(job(), done, [lost_pod(1, deleted_ago=61)], NOW)
    assert list(d.force_delete_pods) == ["kd-1"] and d.status["message"] == "m"
    d = decide(job(suspend=True), {"attempt": 1, "phase": "Suspended"}, [lost_pod(1, deleted_ago=61)], NOW)
    assert list(d.force_delete_pods) == ["kd-1"]


def test_pod_state_sees_that_its_node_stopped_reporting():
    """The node controller sets Ready False on a lost node's pods; their kubelet's last container
    statuses still say ready (a kubelet itself never reports that)."""
    pod = {"metadata": {"name": "kd-1", "labels": {"razor.dev/node-rank": "1", "razor.dev/attempt": "1"}},
           "spec": {"nodeName": "n1"},
           "status": {"phase": "Running",
                      "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-27T11:59:00Z"}],
                      "containerStatuses": [{"name": "trainer", "ready": True, "state": {"running": {}}}]}}
    assert PodState.from_pod(pod).unreachable_since == NOW - timedelta(seconds=60)
    pod["status"]["containerStatuses"][0]["ready"] = False  # what its kubelet says: not the node
    assert PodState.from_pod(pod).unreachable_since is None
    pod["status"]["containerStatuses"][0]["ready"] = True
    pod["status"]["conditions"][0]["status"] = "True"
    assert PodState.from_pod(pod).unreachable_since is None


def test_a_rank_whose_node_stopped_reporting_is_lost_after_the_bound():
    """Even where Kubernetes evicts nothing (every node not ready: a one-node cluster's lost
    node), the gang restarts nodeLostTimeoutSeconds after the node stopped reporting."""
    status = {"attempt": 1, "restarts": 0, "phase": "Running"}
    silent = PodState("kd-2", 2, 1, "Running", node="n1", unreachable_since=NOW - timedelta(seconds=20))
    d = decide(job(nodeLostTimeoutSeconds=60), status, pods(r2=silent), NOW)
    assert d.status["phase"] == "Running" and d.delete_pods == []
    assert d.requeue_after == 40, "back when the bound falls due"
    d = decide(job(nodeLostTimeoutSeconds=10), status, pods(r2=silent), NOW)
    assert d.status["phase"] == "Restarting" and d.status["attempt"] == 2
    assert sorted(d.delete_pods) == ["kd-0", "kd-1", "kd-2", "kd-3"]
    assert d.status["message"].startswith(
        "rank 2 (pod kd-2) lost with node n1: its node stopped reporting 20s ago (nodeLostTimeoutSeconds 10)")
    assert cond(d.status, "Restarting")["reason"] == "NodeLost"


# ---- failures classified: the first by time decides, a permanent exit code on any rank wins -------

def exited(rank, code, at, attempt=1, reason="Error", **kw):
    """A rank whose container exited with ``code`` ``at`` seconds after NOW."""
    return PodState(f"kd-{rank}", rank, attempt, "Failed", code, reason,
                    finished_at=NOW + timedelta(seconds=at), **kw)


def test_the_first_rank_to_fail_decides_not_the_lowest_rank():
    """Rank 3 was OOM-killed first; rank 0's exit a second later is its consequence."""
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"},
               pods(r0=exited(0, 1, at=2), r3=exited(3, 137, at=1, reason="OOMKilled")), NOW)
    assert d.status["message"].startswith("rank 3 (pod kd-3) exited with code 137 (OOMKilled); restarting")
    assert [(e["rank"], e["class"]) for e in d.status["failedRanks"]] == [(3, "Failure"), (0, "Failure")]
    assert d.status["failedRanks"][0]["finishedAt"] == "2026-11-27T12:00:01Z"


def test_a_permanent_exit_code_on_any_rank_wins_over_its_peers_follow_on_failures():
    """Rank 3's bad config (exit 2) came after rank 0's exit 1: the job fails, not restarts."""
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"},
               pods(r0=exited(0, 1, at=1), r3=exited(3, 2, at=3)), NOW)
    assert d.status["phase"] == "Failed" and cond(d.status, "Failed")["reason"] == "PermanentFailure"
    assert d.status["message"] == ("rank 3 (pod kd-3) exited with code 2 (Error); exit code 2 is permanent, "
                                   "not restarted")
    assert d.status["restarts"] == 0 and sorted(d.delete_pods) == ["kd-1", "kd-2"]


def test_a_permanent_failure_reported_after_the_restart_still_fails_the_job():
    """Rank 3 exited 2 before the operator asked it to stop, but its status came after the restart."""
    st = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r0=exited(0, 1, at=1)), NOW).status
    assert st["phase"] == "Restarting"
    going = [PodState("kd-3", 3, 1, "Failed", 2, "Error", deleting=True, finished_at=NOW,
                      deletion_timestamp=NOW + timedelta(seconds=120), deletion_grace=120)]
    d = decide(job(), st, going, NOW + timedelta(seconds=1))
    assert d.status["phase"] == "Failed" and cond(d.status, "Failed")["reason"] == "PermanentFailure"
    assert d.status["message"].startswith("rank 3 (pod kd-3) exited with code 2")
    assert [(e["rank"], e["class"]) for e in d.status["failedRanks"]] == [(3, "Permanent"), (0, "Failure")]
    # Not when it exited only after its deletion: that is how it stopped.
    late = [PodState("kd-3", 3, 1, "Failed", 2, "Error", deleting=True, finished_at=NOW + timedelta(seconds=5),
                     deletion_timestamp=NOW + timedelta(seconds=120), deletion_grace=120)]
    assert decide(job(), st, late, NOW + timedelta(seconds=6)).status["phase"] == "Restarting"


def test_pod_state_reads_when_the_container_finished_and_when_it_was_disrupted():
    pod = {"metadata": {"name": "kd-2", "labels": {"razor.dev/node-rank": "2", "razor.dev/attempt": "1"}},
           "status": {"phase": "Failed",
                      "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                                      "lastTransitionTime": "2026-11-27T11:59:58Z"}],
                      "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                          "exitCode": 75, "reason": "Error", "finishedAt": "2026-11-27T11:59:59Z"}}}]}}
    s = PodState.from_pod(pod)
    assert s.finished_at == NOW - timedelta(seconds=1) and s.disruption_since == NOW - timedelta(seconds=2)
    assert (s.exit_code, s.disruption) == (75, "PreemptionByScheduler")


# ---- preemption does not use up the restart budget; retryable codes; the backoff ---------------------

def test_a_preempted_rank_restarts_the_gang_at_once_without_counting():
    """razor.node exits 75 after a SIGTERM (a preemption, a drain) once the checkpoint is saved."""
    d = decide(job(backoffLimit=0), {"attempt": 1, "restarts": 0, "phase": "Running"},
               pods(r1=exited(1, 75, at=0)), NOW)
    assert d.status["phase"] == "Restarting" and d.status["attempt"] == 2
    assert (d.status["restarts"], d.status["countedRestarts"], d.status["disruptionRestarts"]) == (1, 0, 1)
    assert cond(d.status, "Restarting")["reason"] == "Preempted"
    d = decide(job(backoffLimit=0), d.status, [], NOW)
    assert d.create_ranks == [0, 1, 2, 3], "no backoff after a disruption"


def test_a_pod_disrupted_by_kubernetes_is_not_counted_even_once_it_exited():
    evicted = exited(2, 137, at=1, disruption="EvictionByEvictionAPI", disruption_since=NOW)
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r2=evicted), NOW)
    assert (d.status["restarts"], d.status["countedRestarts"]) == (1, 0)
    assert cond(d.status, "Restarting")["reason"] == "Evicted"
    assert d.status["message"].startswith("rank 2 (pod kd-2) exited with code 137 (Error): evicted through the "
                                          "Eviction API")


def test_a_crash_is_counted_even_if_the_pod_was_deleted_afterwards():
    crashed = exited(2, 1, at=0, deleting=True, deletion_timestamp=NOW + timedelta(seconds=125), deletion_grace=120)
    d = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r2=crashed), NOW)
    assert (d.status["restarts"], d.status["countedRestarts"]) == (1, 1)
    assert cond(d.status, "Restarting")["reason"] == "RankFailed"


def test_retryable_exit_codes_restart_after_the_backoff_without_counting():
    j = job(backoffLimit=0, retryableExitCodes=[124, 2])  # wins over the default permanent 2
    d = decide(j, {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r1=exited(1, 124, at=0)), NOW)
    assert d.status["phase"] == "Restarting"
    assert (d.status["restarts"], d.status["countedRestarts"], d.status["disruptionRestarts"]) == (1, 0, 0)
    assert cond(d.status, "Restarting")["reason"] == "RetryableExitCode"
    assert d.status["nextAttemptTime"] == "2026-11-27T12:00:10Z"
    assert d.status["message"] == ("rank 1 (pod kd-1) exited with code 124 (Error); restarting all 4 rank(s) as "
                                   "attempt 2 in 10s (exit code 124 is retryable: not counted against backoffLimit)")
    d = decide(j, {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r1=exited(1, 2, at=0)), NOW)
    assert d.status["phase"] == "Restarting"


def test_the_backoff_doubles_with_each_counted_restart_up_to_its_cap():
    j = job(backoffLimit=10, restartBackoffSeconds=10, restartBackoffMaxSeconds=30)
    waits = []
    st = {"attempt": 1, "restarts": 0, "phase": "Running"}
    for attempt in range(1, 5):
        st = decide(j, {**st, "phase": "Running"}, pods(attempt=attempt, r0=exited(0, 1, 0, attempt)), NOW).status
        waits.append((_parse(st["nextAttemptTime"]) - NOW).total_seconds())
        assert st["message"].endswith(f"as attempt {attempt + 1} in {waits[-1]:g}s (restart {attempt} of 10)")
    assert waits == [10, 20, 30, 30]


def test_no_backoff_when_restart_backoff_seconds_is_zero():
    j = job(restartBackoffSeconds=0)
    st = decide(j, {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r0=exited(0, 1, 0)), NOW).status
    assert "nextAttemptTime" not in st and decide(j, st, [], NOW).create_ranks == [0, 1, 2, 3]


def test_a_status_from_before_the_counters_were_told_apart_counts_every_restart():
    d = decide(job(backoffLimit=2), {"attempt": 3, "restarts": 2, "phase": "Running"},
               pods(attempt=3, r0=exited(0, 1, 0, 3)), NOW)
    assert d.status["phase"] == "Failed" and cond(d.status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert d.status["message"].endswith("backoffLimit 2 reached after 2 restart(s)")


def test_the_backoff_limit_message_tells_the_uncounted_restarts_apart():
    d = decide(job(backoffLimit=1), {"attempt": 4, "restarts": 3, "countedRestarts": 1, "disruptionRestarts": 2,
                                     "phase": "Running"}, pods(attempt=4, r2=exited(2, 1, 0, 4)), NOW)
    assert d.status["message"] == ("rank 2 (pod kd-2) exited with code 1 (Error); backoffLimit 1 reached after "
                                   "1 restart(s) (2 more not counted)")


def test_suspending_during_the_backoff_forgets_it():
    st = decide(job(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods(r0=exited(0, 1, 0)), NOW).status
    st = decide(job(suspend=True), st, [], NOW).status
    assert "nextAttemptTime" not in st
    assert decide(job(), st, [], NOW).create_ranks == [0, 1, 2, 3]


def _parse(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


# ---- status at scale --------------------------------------------------------------------------------

def big(**spec):
    return parse_job(job_doc("kd", config="c.yaml", nnodes=4096, **spec))


def test_a_4096_node_jobs_status_is_counts_and_a_few_ranks_not_one_entry_per_rank():
    import json

    running = [PodState(f"kd-{r}", r, 1, "Running", node=f"node-{r:04d}") for r in range(4096)]
    d = decide(big(), {"attempt": 1, "restarts": 0, "phase": "Pending"}, running, NOW)
    assert d.status["phase"] == "Running"
    assert d.status["ranksByPhase"] == {"pending": 0, "running": 4096, "succeeded": 0, "failed": 0}
    assert [e["rank"] for e in d.status["ranks"]] == list(range(32))
    assert len(json.dumps(d.status)) < 8000

    running[1234] = exited(1234, 137, at=0, reason="OOMKilled", node="node-1234")
    d = decide(big(), d.status, running, NOW)
    assert d.status["ranksByPhase"] == {"pending": 0, "running": 4095, "succeeded": 0, "failed": 1}
    assert {"rank": 1234, "pod": "kd-1234", "phase": "Failed", "exitCode": 137, "reason": "OOMKilled",
            "node": "node-1234"} in d.status["ranks"] and len(d.status["ranks"]) == 32
    assert d.status["failedRanks"] == [{"rank": 1234, "attempt": 1, "pod": "kd-1234", "exitCode": 137,
                                        "reason": "OOMKilled", "class": "Failure", "node": "node-1234",
                                        "finishedAt": "2026-11-27T12:00:00Z"}]
    assert len(json.dumps(d.status)) < 8000


def test_a_pod_gone_from_a_running_4096_node_gang_is_seen_without_a_list_of_every_rank():
    running = [PodState(f"kd-{r}", r, 1, "Running") for r in range(4096)]
    st = decide(big(), {"attempt": 1, "restarts": 0, "phase": "Pending"}, running, NOW).status
    assert all(e["rank"] != 4000 for e in st["ranks"]), "rank 4000 is not named in the status"
    d = decide(big(), st, running[:4000] + running[4001:], NOW)
    assert d.status["phase"] == "Restarting" and cond(d.status, "Restarting")["reason"] == "PodLost"
    assert d.status["message"].startswith("rank 4000 (pod kd-4000) lost: gone while the gang ran")
    assert len(d.delete_pods) == 4095


def test_the_first_ranks_to_fail_are_the_ones_listed():
    pods_ = [exited(r, 1, at=4096 - r, node=f"n{r}") for r in range(4096)]  # the highest rank failed first
    d = decide(big(), {"attempt": 1, "restarts": 0, "phase": "Running"}, pods_, NOW)
    assert [e["rank"] for e in d.status["failedRanks"]] == list(range(4095, 4095 - 32, -1))
    assert [e["rank"] for e in d.status["ranks"]] == list(range(4096 - 32, 4096))
    assert d.status["message"].startswith("rank 4095 (pod kd-4095) exited with code 1")


def test_the_phases_are_one_enum_of_words():
    Phase = importlib.import_module("razor.policy").Phase
    d = decide(job(), None, [], NOW, service_exists=False)
    assert type(d.status["phase"]) is str if "phase" in d.status else True
    d = decide(job(), {"attempt": 1, "phase": "Pending"}, pods(), NOW)
    assert d.status["phase"] == Phase.RUNNING and type(d.status["phase"]) is str
    assert all(type(c["type"]) is str for c in d.status["conditions"])
    assert rec.FINISHED == {Phase.SUCCEEDED, Phase.FAILED} and "Failed" in rec.FINISHED


# ----------------------------------------------------------------------------- what a rank said


def test_pod_state_reads_its_containers_termination_message():
    def pod(term, last=None):
        cs = {"name": "trainer", "state": {"terminated": term}}
        if last:
            cs["lastState"] = {"terminated": last}
        return {"metadata": {"name": "kd-1", "labels": {"razor.dev/node-rank": "1", "razor.dev/attempt": "1"}},
                "status": {"phase": "Failed", "containerStatuses": [cs]}}

    said = "rank 3 exited with code 1: ValueError: the batch is empty\n"
    assert PodState.from_pod(pod({"exitCode": 1, "message": said})).message == said.strip()
    assert PodState.from_pod(pod({"exitCode": 1}, {"exitCode": 1, "message": said})).message == said.strip()
    assert PodState.from_pod(pod({"exitCode": 1, "message": "  \n"})).message is None


def test_a_failed_ranks_message_is_in_the_status_and_the_event():
    said = "rank 3 exited with code 1: ValueError: the batch is empty\n  File \"train.py\", line 9\nValueError: x"
    failed = PodState("kd-1", 1, 1, "Failed", 1, "Error", message=said)
    d = decide(job(), {"phase": "Running", "attempt": 1}, pods(r1=failed), NOW)
    # razor.policy: the verdict after the first line, the traceback's end below it.
    assert d.status["message"] == ("rank 1 (pod kd-1) exited with code 1 (Error), its process rank 3: ValueError: "
                                   "the batch is empty; restarting all 4 rank(s) as attempt 2 in 10s (restart 1 of 3)"
                                   "\n  File \"train.py\", line 9\nValueError: x")
    assert d.status["failedRanks"][0]["message"] == said
    assert ("Warning", "Restarting", d.status["message"]) in d.events


def test_a_stalled_rank_exits_124_and_says_where_it_stalled():
    stalled = PodState("kd-0", 0, 1, "Failed", 124, "Error", message="no progress for 300 s since epoch 2 step 30")
    d = decide(job(retryableExitCodes=[124]), {"phase": "Running", "attempt": 1}, pods(r0=stalled), NOW)
    assert d.status["message"].startswith("rank 0 (pod kd-0) exited with code 124 (Error): no progress for 300 s "
                                          "since epoch 2 step 30; restarting all 4 rank(s) as attempt 2")
    assert d.status["countedRestarts"] == 0


def test_a_disruption_keeps_its_own_account_over_the_log_tail():
    evicted = PodState("kd-2", 2, 1, "Failed", 137, "Error", disruption="EvictionByEvictionAPI",
                       message="Killed\n(the log's last lines)")
    d = decide(job(), {"phase": "Running", "attempt": 1}, pods(r2=evicted), NOW)
    assert "evicted through the Eviction API" in d.status["message"] and "Killed" not in d.status["message"]


def test_a_long_message_keeps_its_first_line_and_its_last_lines():
    lines = ["rank 3 exited with code 1: RuntimeError: NCCL error", "Traceback (most recent call last):",
             *[f'  File "m.py", line {i}, in f' for i in range(200)], "RuntimeError: NCCL error"]
    text = rec.bounded("\n".join(lines))
    assert len(text) <= rec.DETAIL_MAX
    out = text.splitlines()
    assert out[:2] == [lines[0], "..."] and out[-1] == "RuntimeError: NCCL error" and out[-2] == lines[-2]
    assert rec.bounded("short\n\n  message  \n") == "short\n  message"
    assert rec.bounded("x" * 2000).startswith("x" * 100) and len(rec.bounded("x" * 2000)) <= rec.DETAIL_MAX


# ---- spec.gang: the PodGroup before the pods; why pods wait for the scheduler -------------------


def unschedulable(rank, why="0/1 nodes are available: 1 Insufficient example.com/slot.", node=None):
    return PodState(f"kd-{rank}", rank, 1, "Pending", node=node, unschedulable=why)


def test_a_gang_job_gets_its_pod_group_with_the_pods_of_every_attempt():
    d = decide(job(gang="native"), None, [], NOW, service_exists=False)
    assert d.create_pod_group and d.create_ranks == [0, 1, 2, 3]
    assert not decide(job(), None, [], NOW, service_exists=False).create_pod_group       # gang none
    assert not decide(job(gang="volcano"), {"attempt": 1, "phase": "Pending"}, pods("Pending"), NOW).create_pod_group
    # a restart's next attempt: created again (409: it exists, kept from attempt 1)
    d = decide(job(gang="coscheduling"), {"attempt": 2, "phase": "Restarting", "restarts": 1}, [], NOW)
    assert d.create_pod_group and d.create_ranks == [0, 1, 2, 3]


def test_the_pod_reads_why_the_scheduler_cannot_place_it():
    pod = {"metadata": {"name": "kd-1", "labels": {"razor.dev/node-rank": "1", "razor.dev/attempt": "1"}},
           "status": {"phase": "Pending", "conditions": [
               {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available:\n 1 Insufficient example.com/slot."}]}}
    assert PodState.from_pod(pod).unschedulable == "0/1 nodes are available: 1 Insufficient example.com/slot."
    pod["status"]["conditions"][0]["status"] = "True"
    assert PodState.from_pod(pod).unschedulable is None


def test_a_gang_that_cannot_fit_says_so_and_that_none_of_it_is_placed():
    states = [unschedulable(r, "0/1 nodes are available: 1 Insufficient example.com/slot.") for r in range(4)]
    d = decide(job(gang="native"), {"attempt": 1, "phase": "Pending", "message": "waiting for 4 of 4 rank(s) to run "
                                    "(attempt 1)"}, states, NOW)
    assert d.status["phase"] == "Pending"
    assert d.status["message"] == ("waiting for the gang: 0 of 4 pods scheduled (gang native, all 4 or none; "
                                   "attempt 1): 0/1 nodes are available: 1 Insufficient example.com/slot.")


def test_without_a_gang_the_pods_that_fit_are_placed_and_the_status_names_the_one_that_waits():
    states = [PodState(f"kd-{r}", r, 1, "Pending", node="n1") for r in range(3)] + [unschedulable(3)]
    d = decide(job(), {"attempt": 1, "phase": "Pending"}, states, NOW)
    assert d.status["message"] == ("waiting for the scheduler: 3 of 4 pods scheduled, 1 unschedulable (rank 3; "
                                   "attempt 1): 0/1 nodes are available: 1 Insufficient example.com/slot.")
    # once it is placed, the plain message is back
    states[3] = PodState("kd-3", 3, 1, "Pending", node="n1")
    d = decide(job(), {"attempt": 1, "phase": "Pending", "message": d.status["message"]}, states, NOW)
    assert d.status["message"] == "waiting for 4 of 4 rank(s) to run (attempt 1)"
