"""Data sets the trainer can load. Small real data ships with the packages, so nothing is fetched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSet:
    name: str
    train: Split
    val: Split
    num_features: int
    num_classes: int
    shape: tuple[int, ...]


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    # The 8x8 hand-written digits (1,797 images, UCI optdigits) ship inside scikit-learn.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64), (1, 8, 8)


def _npz(path: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"data.path {path!r} not found")
    with np.load(path) as arrays:
        if "x" not in arrays or "y" not in arrays:
            raise ValueError(f"data.path {path!r} must hold arrays named x and y")
        x, y = arrays["x"].astype(np.float32), arrays["y"].astype(np.int64)
    shape = tuple(x.shape[1:])
    return x.reshape(len(x), -1), y, shape


def load_dataset(cfg: dict[str, Any]) -> DataSet:
    name = cfg.get("dataset", "digits")
    if name == "digits":
        x, y, shape = _digits()
    elif name == "npz":
        x, y, shape = _npz(str(cfg.get("path")))
    else:
        raise ValueError(f"data.dataset {name!r} is not known (known: digits, npz)")
    val_fraction = float(cfg.get("val_fraction", 0.2))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (got {val_fraction})")
    # The same split on every rank and every run: a permutation from a fixed seed.
    order = np.random.default_rng(int(cfg.get("split_seed", 0))).permutation(len(y))
    n_val = int(round(len(y) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    num_classes = int(y.max()) + 1
    as_split = lambda idx: Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # noqa: E731
    return DataSet(name, as_split(train_idx), as_split(val_idx), x.shape[1], num_classes, shape)
