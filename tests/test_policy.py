"""razor.policy: the failure policy every backend asks (pure: no cluster, no clock)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from conftest import job_doc
from razor.node import EXIT_PREEMPTED
from razor.policy import (FINISHED, Action, FailureClass, Phase, Policy, RankOutcome, Restarts, backoff_delay,
                          classify, on_failure, ordered)
from razor.spec import SpecError, parse_job, with_cluster_defaults

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
POLICY = Policy(backoff_limit=3, permanent_exit_codes=frozenset({2, 126, 127}),
                retryable_exit_codes=frozenset({124}), backoff_seconds=10, backoff_max_seconds=360)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def exited(rank: int, code: int, seconds: float | None = None, **kw) -> RankOutcome:
    return RankOutcome(rank, code, kw.pop("reason", "Error"), None if seconds is None else at(seconds),
                       name=f"pod kd-{rank}", **kw)


# ---- the phases -------------------------------------------------------------------------------------

def test_phase_is_one_enum_whose_members_are_the_words():
    assert [p.value for p in Phase] == ["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
    assert Phase.RUNNING == "Running" and f"{Phase.RUNNING}" == "Running" and str(Phase.FAILED) == "Failed"
    assert Phase("Succeeded") is Phase.SUCCEEDED
    assert "Failed" in FINISHED and "Running" not in FINISHED
    assert Phase.FAILED.finished and not Phase.RESTARTING.finished


# ---- classes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("outcome, expected", [
    (exited(0, 1), FailureClass.FAILURE),
    (exited(0, 137, reason="OOMKilled"), FailureClass.FAILURE),
    (exited(0, 2), FailureClass.PERMANENT),
    (exited(0, 127), FailureClass.PERMANENT),
    (exited(0, 124), FailureClass.RETRYABLE),
    (exited(0, EXIT_PREEMPTED), FailureClass.DISRUPTION),
    (exited(0, 137, disruption="Evicted"), FailureClass.DISRUPTION),
    (exited(0, 2, disruption="Evicted"), FailureClass.PERMANENT),
    (RankOutcome(0, None, disruption="NodeLost"), FailureClass.DISRUPTION),
    (RankOutcome(0, None), FailureClass.FAILURE),  # failed without an exit code, for no known reason
])
def test_each_failure_has_one_class(outcome: RankOutcome, expected: FailureClass):
    assert classify(outcome, POLICY) is expected


def test_a_retryable_code_wins_over_a_permanent_one():
    policy = Policy(retryable_exit_codes=frozenset({2}))
    assert classify(exited(0, 2), policy) is FailureClass.RETRYABLE


def test_the_first_failure_by_time_decides_and_a_permanent_one_wins_whenever_it_came():
    first = [o.rank for o, _ in ordered([exited(0, 1, 5), exited(3, 137, 2), exited(1, 1, 9)], POLICY)]
    assert first == [3, 0, 1]
    first = [o.rank for o, _ in ordered([exited(0, 1, 1), exited(3, 2, 7), exited(1, 1, 2)], POLICY)]
    assert first == [3, 0, 1]


def test_equal_times_go_to_the_more_serious_class_then_the_lower_rank():
    same = [exited(0, EXIT_PREEMPTED, 3), exited(2, 124, 3), exited(3, 1, 3), exited(1, 1, 3)]
    assert [o.rank for o, _ in ordered(same, POLICY)] == [1, 3, 2, 0]
    unknown = [exited(0, 1), exited(1, 1, 3)]  # no time: after every known time
    assert [o.rank for o, _ in ordered(unknown, POLICY)] == [1, 0]


# ---- verdicts ---------------------------------------------------------------------------------------

def test_a_failure_restarts_counted_after_the_backoff():
    v = on_failure(POLICY, [exited(2, 137, 0, reason="OOMKilled")], Restarts(), attempt=1, nnodes=4)
    assert (v.action, v.failure_class, v.counted, v.delay, v.reason) == \
        (Action.RESTART, FailureClass.FAILURE, True, 10, "RankFailed")
    assert v.restarts == Restarts(total=1, counted=1, disruptions=0)
    assert v.message == ("rank 2 (pod kd-2) exited with code 137 (OOMKilled); restarting all 4 rank(s) as "
                         "attempt 2 in 10s (restart 1 of 3)")


def test_the_backoff_limit_fails_the_job_once_reached():
    v = on_failure(POLICY, [exited(1, 1, 0)], Restarts(3, 3, 0), attempt=4, nnodes=2)
    assert (v.action, v.reason, v.restarts) == (Action.FAIL, "BackoffLimitExceeded", Restarts(3, 3, 0))
    assert v.message == "rank 1 (pod kd-1) exited with code 1 (Error); backoffLimit 3 reached after 3 restart(s)"


def test_a_permanent_code_fails_at_once_whatever_the_budget():
    v = on_failure(POLICY, [exited(0, 1, 0), exited(3, 2, 4)], Restarts(), attempt=1, nnodes=4)
    assert (v.action, v.reason, v.culprit.rank) == (Action.FAIL, "PermanentFailure", 3)
    assert v.message == "rank 3 (pod kd-3) exited with code 2 (Error); exit code 2 is permanent, not restarted"
    assert [(o.rank, c) for o, c in v.failed] == [(3, FailureClass.PERMANENT), (0, FailureClass.FAILURE)]


def test_disruptions_restart_at_once_uncounted_even_past_the_budget():
    lost = RankOutcome(1, None, None, at(0), "NodeLost", "pod kd-1", "n1", "evicted by the taint manager")
    v = on_failure(POLICY, [lost], Restarts(3, 3, 0), attempt=4, nnodes=2)
    assert (v.action, v.counted, v.delay, v.reason) == (Action.RESTART, False, 0, "NodeLost")
    assert v.restarts == Restarts(4, 3, 1)
    assert v.message == ("rank 1 (pod kd-1) lost with node n1: evicted by the taint manager; restarting all 2 "
                         "rank(s) as attempt 5 (a disruption: not counted against backoffLimit)")
    preempted = on_failure(POLICY, [exited(0, EXIT_PREEMPTED, 0)], Restarts(), attempt=1, nnodes=2)
    assert (preempted.reason, preempted.restarts) == ("Preempted", Restarts(1, 0, 1))


def test_retryable_codes_restart_uncounted_but_backed_off():
    v = on_failure(POLICY, [exited(0, 124, 0)], Restarts(3, 3, 0), attempt=4, nnodes=2)
    assert (v.action, v.counted, v.reason) == (Action.RESTART, False, "RetryableExitCode")
    assert v.restarts == Restarts(4, 3, 0) and v.delay == 80  # the 4th backed-off restart: 10 * 2**3


def test_a_stalled_node_is_retryable_by_default_unless_the_job_makes_it_permanent():
    """razor.node exits 124 when its ranks stop reporting progress: a hang, most often the
    cluster's; the gang restarts from its checkpoint, not counted against backoffLimit."""
    from razor.node import EXIT_STALLED

    assert EXIT_STALLED == 124
    default = Policy()  # the spec's defaults: no retryableExitCodes
    stalled = RankOutcome(0, EXIT_STALLED, None, at(0), name="pod kd-0",
                          detail="no progress for 300 s since epoch 3 step 120")
    assert classify(stalled, default) is FailureClass.RETRYABLE
    v = on_failure(default, [stalled], Restarts(), attempt=1, nnodes=2)
    assert (v.action, v.counted, v.reason) == (Action.RESTART, False, "RetryableExitCode")
    assert v.message.startswith("rank 0 (pod kd-0) exited with code 124: no progress for 300 s since epoch 3 step 120; ")
    assert classify(stalled, Policy(permanent_exit_codes=frozenset({124}))) is FailureClass.PERMANENT


def test_the_backoff_doubles_per_backed_off_restart_up_to_the_cap():
    assert [backoff_delay(POLICY, n) for n in range(0, 8)] == [0, 10, 20, 40, 80, 160, 320, 360]
    assert backoff_delay(POLICY, 10_000) == 360
    assert backoff_delay(Policy(backoff_seconds=0), 3) == 0
    # Disruptions do not make the next wait longer.
    assert Restarts(total=5, counted=1, disruptions=3).backed_off == 2


def test_the_counters_read_an_old_status_as_all_counted():
    assert Restarts.from_status({"restarts": 2}) == Restarts(2, 2, 0)
    assert Restarts.from_status(None) == Restarts()
    counters = Restarts(5, 2, 2)
    assert Restarts.from_status(counters.to_status()) == counters
    assert counters.to_status() == {"restarts": 5, "countedRestarts": 2, "disruptionRestarts": 2}


def test_a_verdict_needs_a_failure():
    with pytest.raises(ValueError):
        on_failure(POLICY, [], Restarts(), 1, 1)


def test_ranks_are_described_for_any_backend():
    assert RankOutcome(3, 1, "Error").describe() == "rank 3 exited with code 1 (Error)"
    assert RankOutcome(3, 1, name="node gpu-7").describe() == "rank 3 (node gpu-7) exited with code 1"
    assert RankOutcome(3, None, name="task 3", detail="NODE_FAIL").describe() == "rank 3 (task 3) lost: NODE_FAIL"


# ---- the spec's fields ------------------------------------------------------------------------------

def test_the_policy_comes_from_the_spec_with_its_defaults():
    spec = parse_job(job_doc("kd", config="c.yaml")).spec
    assert Policy.from_spec(spec) == Policy(3, frozenset({2, 126, 127}), frozenset(), 10, 360)
    spec = parse_job(job_doc("kd", config="c.yaml", backoffLimit=5, retryableExitCodes=[124, 75],
                             restartBackoffSeconds=0, restartBackoffMaxSeconds=60)).spec
    assert Policy.from_spec(spec) == Policy(5, frozenset({2, 126, 127}), frozenset({124, 75}), 0, 60)


@pytest.mark.parametrize("spec, field", [
    ({"retryableExitCodes": [0]}, "spec.retryableExitCodes"),
    ({"retryableExitCodes": [256]}, "spec.retryableExitCodes"),
    ({"restartBackoffSeconds": -1}, "spec.restartBackoffSeconds"),
    ({"restartBackoffMaxSeconds": 86401}, "spec.restartBackoffMaxSeconds"),
])
def test_bad_policy_fields_are_refused_naming_the_field(spec: dict, field: str):
    with pytest.raises(SpecError) as err:
        parse_job(job_doc("kd", config="c.yaml", **spec))
    assert [e.path for e in err.value.errors] == [field]


def test_a_cluster_may_default_the_new_policy_fields():
    doc = with_cluster_defaults(job_doc("kd", config="c.yaml", restartBackoffSeconds=1),
                                {"retryableExitCodes": [124], "restartBackoffSeconds": 30,
                                 "restartBackoffMaxSeconds": 600})
    policy = Policy.from_spec(parse_job(doc).spec)
    assert (policy.retryable_exit_codes, policy.backoff_seconds, policy.backoff_max_seconds) == \
        (frozenset({124}), 1, 600)


def test_in_the_same_second_a_rank_killed_by_a_signal_goes_before_its_peers_follow_on_failures():
    """finishedAt has whole seconds: rank 1 killed (137) and rank 0's collective failing right after
    (exit 1) often share one. The killed rank is the cause (seen on the real node)."""
    same = [exited(0, 1, 4), exited(1, 137, 4)]
    assert [o.rank for o, _ in ordered(same, POLICY)] == [1, 0]
    v = on_failure(POLICY, same, Restarts(), attempt=1, nnodes=2)
    assert v.message.startswith("rank 1 (pod kd-1) exited with code 137")


def test_razor_nodes_message_is_the_detail_said_once_with_its_traceback_after_the_verdict():
    message = ("rank 3 exited with code 1: ValueError: learning rate must be positive\n"
               '  File "train.py", line 16, in check_lr\n    raise ValueError("learning rate must be positive")')
    v = on_failure(POLICY, [exited(1, 1, 0, reason=None, detail=message)], Restarts(), attempt=1, nnodes=2)
    assert v.message.splitlines() == [
        "rank 1 (pod kd-1) exited with code 1, its process rank 3: ValueError: learning rate must be positive; "
        "restarting all 2 rank(s) as attempt 2 in 10s (restart 1 of 3)",
        '  File "train.py", line 16, in check_lr', '    raise ValueError("learning rate must be positive")']
    same = exited(1, 3, reason=None, detail="rank 1 exited with code 3 (no traceback recorded: see docs/trainer.md#tracebacks)")
    assert same.describe() == "rank 1 (pod kd-1) exited with code 3 (no traceback recorded: see docs/trainer.md#tracebacks)"
    other = exited(0, 137, reason="OOMKilled", detail="rank 0 exited with code 137 (SIGKILL)")
    assert other.describe() == "rank 0 (pod kd-0) exited with code 137 (OOMKilled) (SIGKILL)"
