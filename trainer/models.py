"""Models by name: ``model: {type: mlp, hidden: [64]}`` in a config."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class MLP(nn.Sequential):
    def __init__(self, in_features: int, num_classes: int, hidden: list[int] | None = None,
                 dropout: float = 0.0):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden or []:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Convolutions over the image shape, then a linear classifier."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, channels: list[int] | None = None):
        super().__init__()
        self.shape = shape
        c_in = shape[0]
        layers: list[nn.Module] = []
        for c in channels or [16, 32]:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(c_in * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], *self.shape)
        return self.head(self.features(x).flatten(1))


def build_model(cfg: dict[str, Any], in_features: int, num_classes: int,
                shape: tuple[int, ...]) -> nn.Module:
    cfg = dict(cfg)
    kind = cfg.pop("type", "mlp")
    try:
        if kind == "mlp":
            return MLP(in_features, num_classes, **cfg)
        if kind == "linear":
            return MLP(in_features, num_classes, hidden=[], **cfg)
        if kind == "cnn":
            if len(shape) != 3 or math.prod(shape) != in_features:
                raise ValueError(f"model type cnn needs image data; this data has shape {shape}")
            return SmallCNN(shape, num_classes, **cfg)
    except TypeError as exc:
        raise ValueError(f"model {kind}: {exc}") from None
    raise ValueError(f"model.type {kind!r} is not known (known: mlp, linear, cnn)")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
