"""How far a job is: the training processes report it, razor.node collects it, backends show it.

A training process (the built-in trainer, or a user's own script) calls :func:`report` at each
log interval::

    from razor.progress import report
    report(stage="train", epoch=2, epochs=5, step=30, steps=100, metrics={"loss": 0.231})

Outside razor (``RAZOR_PROGRESS_DIR`` unset: a script run by hand, or under a bare torchrun) the
call does nothing, so a script that reports still runs anywhere, and one that never reports
still runs under razor (it only has no progress to show, and no stall detection).

The path of a report:

1. :func:`report` writes the calling rank's latest :class:`Progress` to
   ``$RAZOR_PROGRESS_DIR/rank-<RANK>.json`` (atomically: a reader never sees half a file).
   razor.node makes that directory, node-local, for its training processes.
2. razor.node watches those files (:func:`read_reports`): a rank that reports is alive, which is
   how a stall is noticed; node 0 writes global rank 0's latest as the job's progress to
   ``<work_dir>/razor-status/progress.json`` (:func:`write_progress`), and on Kubernetes POSTs
   it to the operator, which patches ``status.progress``.
3. Each razor.node, as it ends, writes ``<work_dir>/razor-status/node-<NODE_RANK>.json``
   (:func:`write_node_end`): its exit code and the failure's message (a failed rank's traceback,
   a stall).
4. A backend's ``razorctl status`` reads them (:func:`read_progress`, :func:`read_node_ends`) and
   prints :func:`line` (:func:`bar` on a terminal, then :func:`describe`); ``-o json`` carries
   :meth:`Progress.to_status`.

Standard library only: razor.node and users' scripts import it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The folder of razor's records in a job's work dir.
STATUS_DIR = "razor-status"
#: The job's progress in STATUS_DIR (global rank 0's latest, written by node 0).
PROGRESS_FILE = "progress.json"
#: Where a training process reports (set by razor.node; unset: report() does nothing).
PROGRESS_DIR_ENV = "RAZOR_PROGRESS_DIR"
#: The stages a trainer reports; a user's script may name its own.
STAGES = ("train", "val", "done")


def rfc3339(t: float) -> str:
    """``2026-12-01T06:00:00Z``: a Kubernetes timestamp (whole seconds, UTC)."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    """The unix time of an RFC 3339 timestamp (``Z`` or an offset; fractions allowed)."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _number(value: Any) -> float | None:
    """A finite float, or None: Kubernetes' JSON (and the operator's patch) has no NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _count(value: Any) -> int | None:
    out = _number(value)
    return None if out is None else int(out)


@dataclass
class Progress:
    """One rank's (or the job's) latest progress. ``epoch`` counts from 1; ``step``/``steps``
    are within the epoch when ``epochs`` is given, else of the whole run; ``percent`` (0-100)
    and ``eta_seconds`` are of the whole run; ``updated`` is the unix time of the report."""

    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    percent: float | None = None
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    samples_per_second: float | None = None
    updated: float = 0.0

    def to_status(self) -> dict[str, Any]:
        """The camelCase form of a status (Kubernetes' ``status.progress``, ``-o json``), without
        the fields that are None."""
        doc: dict[str, Any] = {
            "stage": self.stage, "epoch": self.epoch, "epochs": self.epochs, "step": self.step,
            "steps": self.steps,
            "percent": None if self.percent is None else round(self.percent, 2),
            "etaSeconds": None if self.eta_seconds is None else int(round(self.eta_seconds)),
            "metrics": {k: v for k, v in ((str(k), _number(v)) for k, v in self.metrics.items())
                        if v is not None} or None,
            "samplesPerSecond": None if self.samples_per_second is None else round(self.samples_per_second, 2),
            "lastUpdateTime": rfc3339(self.updated),
        }
        return {k: v for k, v in doc.items() if v is not None}

    @classmethod
    def from_status(cls, doc: dict[str, Any]) -> "Progress":
        """The inverse of :meth:`to_status` (a ValueError for what is not one)."""
        if not isinstance(doc, dict):
            raise ValueError(f"a progress is a mapping, not {type(doc).__name__}")
        metrics = doc.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ValueError("progress.metrics is not a mapping")
        stage = doc.get("stage")
        updated = doc.get("lastUpdateTime")
        return cls(
            stage=None if stage is None else str(stage),
            epoch=_count(doc.get("epoch")), epochs=_count(doc.get("epochs")),
            step=_count(doc.get("step")), steps=_count(doc.get("steps")),
            percent=_number(doc.get("percent")), eta_seconds=_number(doc.get("etaSeconds")),
            metrics={str(k): v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None},
            samples_per_second=_number(doc.get("samplesPerSecond")),
            updated=parse_rfc3339(updated) if isinstance(updated, str) else 0.0,
        )

    def where(self) -> str:
        """Where the run was: ``epoch 2 step 30`` (for "no progress for N s since ...")."""
        parts = [f"{name} {value}" for name, value in (("epoch", self.epoch), ("step", self.step))
                 if value is not None]
        if not parts:
            return f"stage {self.stage}" if self.stage else "the last report"
        return " ".join(parts)


# ----------------------------------------------------------------------------- reporting


#: The first report of this process with a percent: (time, percent), for a derived ETA.
_first: tuple[float, float] | None = None


def _derived_percent(epoch: int | None, epochs: int | None, step: int | None, steps: int | None) -> float | None:
    if epochs and epoch is not None:
        within = step / steps if step is not None and steps else 0.0
        return max(0.0, min(100.0, 100.0 * ((epoch - 1) + within) / epochs))
    if step is not None and steps:
        return max(0.0, min(100.0, 100.0 * step / steps))
    return None


def report(*, stage: str | None = None, epoch: int | None = None, epochs: int | None = None,
           step: int | None = None, steps: int | None = None, percent: float | None = None,
           eta_seconds: float | None = None, metrics: dict[str, float] | None = None,
           samples_per_second: float | None = None) -> None:
    """Report this rank's progress (every rank may; razor shows global rank 0's, and any rank's
    report keeps its node from counting as stalled).

    ``percent`` is derived from epoch/epochs and step/steps when not given (epoch counts from 1,
    step within it), and ``eta_seconds`` from the pace since this process's first report.
    Never raises for a full or read-only disk: progress must not end a training run. A no-op
    outside razor (``RAZOR_PROGRESS_DIR`` unset)."""
    global _first
    folder = os.environ.get(PROGRESS_DIR_ENV)
    if not folder:
        return
    now = time.time()
    if percent is None:
        percent = _derived_percent(epoch, epochs, step, steps)
    if percent is not None and eta_seconds is None:
        if _first is None or percent < _first[1]:
            _first = (now, percent)
        elif percent > _first[1] and now > _first[0]:
            rate = (percent - _first[1]) / (now - _first[0])
            eta_seconds = max(0.0, (100.0 - percent) / rate)
    progress = Progress(stage, epoch, epochs, step, steps, percent, eta_seconds, dict(metrics or {}),
                        samples_per_second, now)
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    try:
        write_json(Path(folder) / f"rank-{rank}.json",
                   {"rank": int(rank), "updated": now, "progress": progress.to_status()})
    except (OSError, ValueError):
        pass


def read_reports(folder: str | Path) -> dict[int, Progress]:
    """The latest report of every rank in razor.node's ``folder`` (``RAZOR_PROGRESS_DIR``), by
    global rank; a file being replaced or garbled is skipped (it is read again next time)."""
    out: dict[int, Progress] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if not (name.startswith("rank-") and name.endswith(".json")):
            continue
        doc = read_json(Path(folder) / name)
        try:
            progress = Progress.from_status(doc["progress"])
            progress.updated = float(doc["updated"])  # to the fraction of a second
            out[int(doc["rank"])] = progress
        except (KeyError, TypeError, ValueError):
            continue
    return out


# ----------------------------------------------------------------------------- showing


def duration(seconds: float) -> str:
    """``45s``, ``1m20s``, ``2h05m``, ``3d04h``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _percent(value: float) -> str:
    # Floored: a run is not shown as 100% before it is done.
    return f"{int(math.floor(max(0.0, min(100.0, value))))}%"


def _metric(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.4g}"


def describe(p: Progress | None, now: float | None = None, percent: bool = True) -> str:
    """One plain line: ``epoch 2/5, step 30/100, 43%, ETA 1m20s, loss 0.231, accuracy 0.910,
    512 samples/s, updated 5s ago`` (a stage other than train first: ``val, epoch 2/5, ...``)."""
    if p is None:
        return "no progress reported yet"
    now = time.time() if now is None else now
    parts = []
    if p.stage and p.stage != "train":
        parts.append(p.stage)
    if p.epoch is not None:
        parts.append(f"epoch {p.epoch}/{p.epochs}" if p.epochs else f"epoch {p.epoch}")
    if p.step is not None:
        parts.append(f"step {p.step}/{p.steps}" if p.steps else f"step {p.step}")
    if p.percent is not None and percent:
        parts.append(_percent(p.percent))
    if p.eta_seconds is not None and p.stage != "done":
        parts.append(f"ETA {duration(p.eta_seconds)}")
    parts += [f"{name} {_metric(value)}" for name, value in p.metrics.items()]
    if p.samples_per_second is not None:
        sps = p.samples_per_second
        parts.append(f"{sps:.0f} samples/s" if sps >= 10 else f"{sps:.1f} samples/s")
    if p.updated:
        parts.append(f"updated {duration(now - p.updated)} ago")
    return ", ".join(parts)


def line(p: Progress | None, tty: bool = False, now: float | None = None) -> str:
    """What ``razorctl status`` shows on every backend: on a terminal the bar, then
    :func:`describe` without the percent the bar already shows; otherwise describe alone."""
    if tty and p is not None:
        return f"{bar(p)} {describe(p, now, percent=False)}"
    return describe(p, now)


def bar(p: Progress, width: int = 30) -> str:
    """``[##########..........] 43%`` for a terminal (``?%`` while no percent is known)."""
    if p.percent is None:
        return f"[{'.' * width}] ?%"
    done = int(max(0.0, min(100.0, p.percent)) * width // 100)
    return f"[{'#' * done}{'.' * (width - done)}] {_percent(p.percent)}"


# ----------------------------------------------------------------------------- records


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` as ``path`` atomically: a temp file in the same folder, then a rename, so
    that a reader (another process, another machine on a shared disk) sees the old file or the
    new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when it is missing or garbled."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def status_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / STATUS_DIR


def write_progress(work_dir: str | Path, progress: Progress) -> None:
    """The job's progress, as node 0 sees global rank 0's."""
    write_json(status_dir(work_dir) / PROGRESS_FILE, progress.to_status())


def read_progress(work_dir: str | Path) -> Progress | None:
    """The job's progress from its work dir; None when none was written (or it is garbled)."""
    doc = read_json(status_dir(work_dir) / PROGRESS_FILE)
    try:
        return None if doc is None else Progress.from_status(doc)
    except (TypeError, ValueError):
        return None


def node_end_file(work_dir: str | Path, node_rank: int) -> Path:
    return status_dir(work_dir) / f"node-{node_rank}.json"


def write_node_end(work_dir: str | Path, node_rank: int, attempt: int, exit_code: int,
                   message: str | None, finished: float | None = None) -> None:
    """How one node ended: ``{"nodeRank", "attempt", "exitCode", "message", "finishedAt"}``."""
    write_json(node_end_file(work_dir, node_rank), {
        "nodeRank": int(node_rank), "attempt": int(attempt), "exitCode": int(exit_code),
        "message": message, "finishedAt": rfc3339(time.time() if finished is None else finished),
    })


def read_node_ends(work_dir: str | Path) -> dict[int, dict]:
    """Every node's end record in the work dir, by node rank ({} when there are none)."""
    out: dict[int, dict] = {}
    try:
        names = os.listdir(status_dir(work_dir))
    except OSError:
        return out
    for name in names:
        if not (name.startswith("node-") and name.endswith(".json")):
            continue
        doc = read_json(status_dir(work_dir) / name)
        if isinstance(doc, dict) and isinstance(doc.get("nodeRank"), int):
            out[doc["nodeRank"]] = doc
    return out
