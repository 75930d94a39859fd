"""Whose a work dir is: ``razor-workdir.json`` records the job and the model it belongs to.

Two jobs with the same config share ``work_dirs/<config stem>`` by default (the seed's layout); a
second job that "resumes" the first's checkpoint, or one of another model, would crash or skip its
training. So the first run in a work dir records its owner:

- ``job``: the RazorJob's name (``RAZOR_JOB_NAME``, set by every backend and by
  ``tools/dist_train.sh``), or null for a run without one (the seed's ``tools/train.py``);
- ``fingerprint`` of what a checkpoint must match to be loaded: the ``model`` section, the
  algorithm's type and, for knowledge distillation, the teacher's model (``model`` and
  ``algorithm`` beside it, to be read by people).

A later run in that work dir is refused at start, with an error naming the work dir, its owner
and the ways on, when its model differs, or when both it and the owner have a job name and the
names differ, unless it resumes explicitly from a checkpoint (``--resume PATH``): then it takes
the work dir over. A run without a job name is judged by its model alone, and a named job takes
over a work dir of unnamed runs. A work dir from before this file existed is judged by its newest
readable checkpoint's config. Only rank 0 looks: the work dirs of other machines hold nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from razor.config import ConfigError

from . import checkpoint as ckpt

OWNER_FILE = "razor-workdir.json"


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint of this config holds: the model, the algorithm, the teacher's model."""
    algo = dict(cfg.get("algorithm") or {})
    kind = str(algo.get("type", "supervised"))
    out: dict[str, Any] = {"model": copy.deepcopy(cfg.get("model")), "algorithm": kind}
    if kind == "kd":
        out["teacher_model"] = copy.deepcopy((algo.get("teacher") or {}).get("model"))
    return out


def fingerprint(cfg: dict[str, Any]) -> str:
    text = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(ident: dict[str, Any]) -> str:
    text = f"model {json.dumps(ident.get('model'), default=str)}, {ident.get('algorithm')}"
    if ident.get("teacher_model") is not None:
        text += f" with teacher {json.dumps(ident['teacher_model'], default=str)}"
    return text


def _job(name: str | None) -> str:
    return f"job {name!r}" if name else "runs without a job name"


def read_owner(work_dir: Path) -> dict[str, Any] | None:
    path = work_dir / OWNER_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"work dir {work_dir}: {OWNER_FILE} cannot be read ({exc}); it records which "
                          "job the work dir belongs to: repair or remove it") from None
    if not isinstance(record, dict) or "fingerprint" not in record:
        raise ConfigError(f"work dir {work_dir}: {OWNER_FILE} is not a razor work dir record; "
                          "repair or remove it")
    return record


def write_owner(work_dir: Path, record: dict[str, Any], new: bool = False) -> bool:
    """Write the record atomically; ``new``: only if there is none yet (False when another run
    wrote one first: two runs started at once in a fresh work dir do not both take it)."""
    text = (json.dumps(record, indent=2, default=str) + "\n").encode()
    path = work_dir / OWNER_FILE
    if not new:
        ckpt.atomic_write(path, lambda fh: fh.write(text))
        return True
    fd, tmp = tempfile.mkstemp(prefix=f".{OWNER_FILE}.", suffix=".tmp", dir=work_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # atomic, and fails when the file exists
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _legacy_owner(work_dir: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """A work dir without the record, from before it existed: its newest checkpoint's config."""
    for directory in (work_dir, work_dir / "teacher"):
        found = ckpt.load_latest(directory, log)
        if found is not None:
            path, state = found
            cfg = state.get("config") if isinstance(state, dict) else None
            if isinstance(cfg, dict):
                return {"job": None, "fingerprint": fingerprint(cfg), **identity(cfg),
                        "from_checkpoint": str(path)}
            return None
    return None


def claim(work_dir: Path, cfg: dict[str, Any], job: str | None, resume: str, config_path: str,
          log: Callable[[str], None]) -> None:
    """Check that ``work_dir`` is this run's (raise ConfigError saying why not), then record it.

    ``resume`` is the trainer's --resume: 'auto', 'never' or a checkpoint path; a checkpoint in
    ``work_dir`` asks for it explicitly, and the run may take over a work dir of another job (of
    the same model)."""
    ident, mark = identity(cfg), fingerprint(cfg)
    explicit = resume not in ("auto", "never") and _inside(Path(resume), work_dir)
    record = read_owner(work_dir)
    legacy = record is None
    if legacy:
        record = _legacy_owner(work_dir, log)
    owner_job = record.get("job") if record else None
    if record and record["fingerprint"] != mark:
        what = "holds checkpoints of another model" if legacy else f"holds {_job(owner_job)}"
        raise ConfigError(
            f"work dir {work_dir} {what} ({describe(record)}), not this run's "
            f"({describe(ident)}): its checkpoints cannot be loaded into this model. Give this run "
            f"a work dir of its own (--work-dir DIR, RazorJob spec.workDir), or remove {work_dir} "
            "to start afresh there")
    if record and owner_job and job and owner_job != job:
        if not explicit:
            newest = ckpt.candidates(work_dir)
            example = str(newest[0]) if newest else f"{work_dir}/epoch_N.pth"
            raise ConfigError(
                f"work dir {work_dir} belongs to job {owner_job!r} ({describe(record)}), not to job "
                f"{job!r}: it would resume the other job's checkpoints. Give this job a work dir of "
                f"its own (--work-dir DIR, RazorJob spec.workDir); or, to continue that job's "
                f"training as this one, resume from its checkpoint explicitly (--resume {example}, "
                f"RazorJob spec.resume), and this job takes the work dir over; or remove "
                f"{work_dir} to start afresh there")
        log(f"work dir {work_dir}: job {job!r} takes it over from job {owner_job!r} "
            f"(--resume {resume})")
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    keep_job = owner_job if (owner_job and not job) else job
    base = {} if legacy or record is None else record
    if not legacy and record is not None and record.get("job") == keep_job:
        return  # already this run's, nothing to write
    fresh = record is None
    written = write_owner(work_dir, {
        "job": keep_job,
        "fingerprint": mark,
        **ident,
        "config": config_path,
        "created": base.get("created", now),
        "updated": now,
        "host": os.uname().nodename,
    }, new=fresh)
    if not written:  # another run recorded itself a moment ago: judge this one against it
        claim(work_dir, cfg, job, resume, config_path, log)


def _inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False
