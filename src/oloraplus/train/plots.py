"""The run's loss curves (`loss.png`), drawn from its `log.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


MARKERS_UP_TO = 50  # points per curve drawn with markers: a short run's one or two points stay visible


def draw_losses(records: list[dict], title: str = ""):
    """The figure of `loss.png`: every logged train and eval point, with markers when there are few."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for points, label, color in ((train, "train loss", "tab:blue"), (evals, "eval loss", "tab:orange")):
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) <= MARKERS_UP_TO else None, markersize=4,
                    label=label, color=color)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(log_path: str | Path, out_path: str | Path, title: str = "") -> None:
    fig = draw_losses(read_log(log_path), title)
    tmp = Path(out_path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_path)
