"""razor.progress: what a training process reports, the records razor.node writes, how they read."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from razor import progress
from razor.progress import Progress, bar, describe, line, read_node_ends, read_progress, read_reports, report

EXAMPLE = Progress(stage="train", epoch=2, epochs=5, step=30, steps=100, percent=43.0, eta_seconds=80,
                   metrics={"loss": 0.231, "accuracy": 0.91}, samples_per_second=512.0,
                   updated=1796104800.0)  # 2026-12-01T06:00:00Z


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A rank under razor.node: RAZOR_PROGRESS_DIR and torchrun's RANK set."""
    folder = tmp_path / "progress"
    folder.mkdir()
    monkeypatch.setenv("RAZOR_PROGRESS_DIR", str(folder))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setattr(progress, "_first", None)
    return folder


def test_the_status_form_is_camel_case_without_nones_and_reads_back():
    doc = EXAMPLE.to_status()
    assert doc == {"stage": "train", "epoch": 2, "epochs": 5, "step": 30, "steps": 100, "percent": 43.0,
                   "etaSeconds": 80, "metrics": {"loss": 0.231, "accuracy": 0.91}, "samplesPerSecond": 512.0,
                   "lastUpdateTime": "2026-12-01T06:00:00Z"}
    assert Progress.from_status(doc) == EXAMPLE
    assert Progress(stage="val", updated=EXAMPLE.updated).to_status() == {
        "stage": "val", "lastUpdateTime": "2026-12-01T06:00:00Z"}
    # Kubernetes' JSON has no NaN: a metric that is not a number is left out.
    assert Progress(metrics={"loss": math.nan, "acc": 1}).to_status()["metrics"] == {"acc": 1.0}
    with pytest.raises(ValueError):
        Progress.from_status(["not", "a", "mapping"])


def test_describe_says_it_in_one_plain_line():
    now = EXAMPLE.updated + 5
    assert describe(EXAMPLE, now) == ("epoch 2/5, step 30/100, 43%, ETA 1m20s, loss 0.231, accuracy 0.910, "
                                      "512 samples/s, updated 5s ago")
    assert describe(None) == "no progress reported yet"
    val = Progress(stage="val", epoch=1, epochs=2, percent=99.7, eta_seconds=4000, updated=EXAMPLE.updated)
    assert describe(val, EXAMPLE.updated + 7300) == "val, epoch 1/2, 99%, ETA 1h06m, updated 2h01m ago"
    done = Progress(stage="done", percent=100, eta_seconds=0, metrics={"accuracy": 0.97}, updated=EXAMPLE.updated)
    assert describe(done, EXAMPLE.updated) == "done, 100%, accuracy 0.970, updated 0s ago"


def test_status_shows_a_bar_on_a_terminal_and_the_percent_once():
    now = EXAMPLE.updated + 5
    assert line(EXAMPLE, tty=False, now=now) == describe(EXAMPLE, now)
    shown = line(EXAMPLE, tty=True, now=now)
    assert shown.startswith("[############..................] 43% epoch 2/5, step 30/100, ETA 1m20s")
    assert shown.count("43%") == 1
    assert line(None, tty=True) == "no progress reported yet"


def test_bar_fills_with_the_percent():
    assert bar(EXAMPLE, 20) == "[########............] 43%"
    assert bar(Progress(percent=100), 10) == "[##########] 100%"
    assert bar(Progress(), 5) == "[.....] ?%"


def test_report_is_a_no_op_outside_razor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAZOR_PROGRESS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    report(stage="train", epoch=1, epochs=2)
    assert list(tmp_path.iterdir()) == []


def test_report_writes_the_ranks_latest_progress(reports: Path):
    report(stage="train", epoch=2, epochs=4, step=5, steps=10, metrics={"loss": 0.5}, samples_per_second=100)
    report(stage="train", epoch=2, epochs=4, step=10, steps=10, metrics={"loss": 0.25})
    got = read_reports(reports)
    assert list(got) == [3]
    p = got[3]
    assert (p.stage, p.epoch, p.epochs, p.step, p.steps, p.metrics) == ("train", 2, 4, 10, 10, {"loss": 0.25})
    assert p.percent == 50.0  # derived: epoch 2 of 4 done
    assert p.eta_seconds is not None  # from the pace since the first report
    assert [f.name for f in reports.iterdir()] == ["rank-3.json"]  # no temp file left behind


def test_the_eta_follows_the_pace_since_the_first_report(reports: Path, monkeypatch: pytest.MonkeyPatch):
    clock = iter([1000.0, 1010.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    report(step=10, steps=100)
    report(step=20, steps=100)  # 10% in 10 s: 80% more in 80 s
    assert read_reports(reports)[3].eta_seconds == pytest.approx(80)


def test_report_never_ends_the_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RAZOR_PROGRESS_DIR", str(blocker))  # not a folder: every write fails
    report(stage="train", epoch=1, metrics={"loss": math.inf})


def test_a_garbled_or_half_report_is_skipped(reports: Path):
    (reports / "rank-0.json").write_text("{garbled")
    (reports / "rank-1.json").write_text(json.dumps({"rank": 1}))
    (reports / "other.json").write_text("{}")
    assert read_reports(reports) == {}
    assert read_reports(reports / "missing") == {}


def test_the_records_in_the_work_dir(tmp_path: Path):
    work = tmp_path / "w"
    assert read_progress(work) is None and read_node_ends(work) == {}
    progress.write_progress(work, EXAMPLE)
    assert read_progress(work) == EXAMPLE
    assert json.loads((work / "razor-status" / "progress.json").read_text())["lastUpdateTime"] == "2026-12-01T06:00:00Z"
    progress.write_node_end(work, 1, 2, 124, "no progress for 5 s since epoch 1 step 3", finished=EXAMPLE.updated)
    progress.write_node_end(work, 0, 2, 0, None, finished=EXAMPLE.updated)
    assert read_node_ends(work) == {
        0: {"nodeRank": 0, "attempt": 2, "exitCode": 0, "message": None, "finishedAt": "2026-12-01T06:00:00Z"},
        1: {"nodeRank": 1, "attempt": 2, "exitCode": 124, "message": "no progress for 5 s since epoch 1 step 3",
            "finishedAt": "2026-12-01T06:00:00Z"},
    }
    (work / "razor-status" / "progress.json").write_text("[1, 2")
    (work / "razor-status" / "node-7.json").write_text("{}")
    assert read_progress(work) is None and set(read_node_ends(work)) == {0, 1}
    assert sorted(os.listdir(work / "razor-status")) == ["node-0.json", "node-1.json", "node-7.json", "progress.json"]


@pytest.mark.local
def test_the_trainer_reports_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kd_config: str):
    """At each log interval and after each validation, on every rank: stage, epoch, step, the
    percent of the whole run (a KD teacher's epochs, then the student's), loss, accuracy."""
    from razor_trainer import train

    calls: list[dict] = []
    monkeypatch.setattr(train, "report", lambda **kw: calls.append(kw))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.chdir(tmp_path)
    code = train.main([kd_config, "--launcher", "none", "--work-dir", "w", "--cfg-options",
                       "schedule.epochs=2", "algorithm.teacher.epochs=2", "log.interval=20"])
    assert code == 0
    stages = [c["stage"] for c in calls]
    # 45 batches an epoch: iterations 20 and 40 are logged, then the validation; 4 epochs in all.
    assert stages == ["train", "train", "val"] * 4 + ["done"]
    first, val, last = calls[0], calls[2], calls[-1]
    assert (first["epoch"], first["epochs"], first["step"], first["steps"]) == (1, 2, 20, 45)
    assert first["percent"] == pytest.approx(100 * (20 / 45) / 4)
    assert set(first["metrics"]) == {"loss"} and first["samples_per_second"] > 0
    assert (val["epoch"], val["step"], val["steps"], val["percent"]) == (1, 45, 45, 25.0)
    assert set(val["metrics"]) == {"loss", "accuracy"}
    assert [c["percent"] for c in calls if c["stage"] == "val"] == [25.0, 50.0, 75.0, 100.0]
    assert last["percent"] == 100.0 and 0 < last["metrics"]["accuracy"] <= 1
