"""Checkpoints in a work dir: ``epoch_N.pth``, ``last_checkpoint``, written atomically.

A checkpoint is first written to a temporary file in the same folder, flushed to disk, then
renamed over its final name; ``last_checkpoint`` (a text file naming the newest checkpoint) is
replaced the same way, after the checkpoint. A kill at any moment leaves the previous
checkpoint and pointer intact.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

POINTER = "last_checkpoint"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pth$")
_PARTIAL_RE = re.compile(r"^epoch_(\d+)_iter_(\d+)\.pth$")


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file in its folder, flushed and renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint_name(epoch: int, iteration: int) -> str:
    """``epoch`` counts finished epochs; ``iteration`` the batches done of the next one."""
    return f"epoch_{epoch}.pth" if iteration == 0 else f"epoch_{epoch + 1}_iter_{iteration}.pth"


def save(directory: Path, state: dict[str, Any], epoch: int, iteration: int, max_keep: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(epoch, iteration)
    atomic_write(path, lambda fh: torch.save(state, fh))
    atomic_write(directory / POINTER, lambda fh: fh.write(f"{path.name}\n".encode()))
    prune(directory, keep=path.name, max_keep=max_keep)
    return path


def prune(directory: Path, keep: str, max_keep: int) -> None:
    """Drop mid-epoch checkpoints older than ``keep`` and all but the newest max_keep epochs."""
    epochs = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _EPOCH_RE.match(p.name))
    )
    doomed = [p for p in directory.iterdir() if _PARTIAL_RE.match(p.name) and p.name != keep]
    if max_keep > 0:
        doomed += [p for _, p in epochs[:-max_keep] if p.name != keep]
    for path in doomed:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def candidates(directory: Path) -> list[Path]:
    """Checkpoints to resume from, best first: the pointer's, then the rest, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        if m := _EPOCH_RE.match(p.name):
            found.append(((int(m.group(1)), 0), p))
        elif m := _PARTIAL_RE.match(p.name):
            found.append(((int(m.group(1)) - 1, int(m.group(2))), p))
    ordered = [p for _, p in sorted(found, reverse=True)]
    pointer = directory / POINTER
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        if named.is_file():
            ordered = [named] + [p for p in ordered if p != named]
    return ordered


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)


def load_latest(directory: Path, log) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest readable checkpoint in ``directory``; a broken file is skipped, said aloud."""
    for path in candidates(directory):
        try:
            return path, load(path)
        except Exception as exc:  # a truncated or foreign file: try the one before
            log(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); trying an older one")
    return None
