"""The loss and accuracy plot of a work dir's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest: dict[tuple, dict] = {}
    for row in rows:  # a resumed run may have recorded an epoch twice: the last one counts
        latest[(row.get("stage"), row.get("epoch"))] = row
    return list(latest.values())


def plot_metrics(metrics: Path, out: Path) -> Path | None:
    rows = read_metrics(metrics)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in stages:
        pts = sorted((r["epoch"], r["loss"], r["val_acc"]) for r in rows if r["stage"] == stage)
        epochs = [p[0] for p in pts]
        ax_loss.plot(epochs, [p[1] for p in pts], marker=".", label=stage)
        ax_acc.plot(epochs, [p[2] for p in pts], marker=".", label=stage)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="held-out accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
