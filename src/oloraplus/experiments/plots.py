"""The report's figures: loss curves per arm, metrics and diagnostics against λ, steps to the baseline."""

from __future__ import annotations

import io
import math
import statistics
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from oloraplus.experiments.runs import Arm, Run  # noqa: E402
from oloraplus.experiments.sweepdir import format_value  # noqa: E402
from oloraplus.io import atomic_write_bytes  # noqa: E402

METRIC_TITLES = {
    "eval_loss": "eval loss", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bleu": "corpus BLEU",
}


def save_figure(fig, path: Path) -> Path:
    """PNG, written atomically, with every label visible and no warning on the terminal.

    tight_layout spaces the panels; when a label is wider than the figure it gives up ("Tight layout
    not applied"), and bbox_inches="tight" grows the canvas to fit the label instead.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _band(curves: Sequence[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean and min–max over seeds at the steps every seed logged."""
    maps = [dict(curve) for curve in curves if curve]
    if not maps:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(m) for m in maps)))
    mean = [statistics.fmean(m[s] for m in maps) for s in steps]
    low = [min(m[s] for m in maps) for s in steps]
    high = [max(m[s] for m in maps) for s in steps]
    return steps, mean, low, high


def plot_loss_curves(arms: Sequence[Arm], path: Path, title: str) -> Path:
    """Train loss (and eval loss when evaluated more than once) per arm: mean over seeds, min–max shaded."""
    has_eval = any(len(run.eval_curve()) > 1 for arm in arms for run in arm.runs)
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(11 if has_eval else 6.5, 4.2), dpi=110, squeeze=False)
    panels = [("train loss", Run.train_curve)] + ([("eval loss", Run.eval_curve)] if has_eval else [])
    for ax, (name, curve_of) in zip(axes[0], panels):
        for arm in arms:
            steps, mean, low, high = _band([curve_of(run) for run in arm.runs])
            if not steps:
                continue
            (line,) = ax.plot(steps, mean, label=arm.label, marker="o" if name == "eval loss" else None, ms=3)
            if len(arm.runs) > 1:
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{name} (nats/token)")
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        _legend(ax)
    return save_figure(fig, path)


def _lines_by_method(arms: Sequence[Arm]) -> dict[str, list[Arm]]:
    """One line per method (and per value of any other varying option), points ordered by λ."""
    lines: dict[str, list[Arm]] = {}
    for arm in arms:
        lines.setdefault(arm.line_label, []).append(arm)
    return {label: sorted(members, key=lambda a: a.ratio) for label, members in lines.items()}


def _against_ratio(ax, arms: Sequence[Arm], value_of, ylabel: str) -> None:
    for index, (label, members) in enumerate(_lines_by_method(arms).items()):
        points = [(arm.ratio, [v for v in value_of(arm) if math.isfinite(v)]) for arm in members]
        points = [(x, vs) for x, vs in points if vs]
        if not points:
            continue
        xs = [x for x, _ in points]
        means = [statistics.fmean(vs) for _, vs in points]
        errs = [statistics.stdev(vs) if len(vs) > 1 else 0.0 for _, vs in points]
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=label, color=f"C{index % 10}")
    set_ratio_axis(ax, sorted({arm.ratio for arm in arms}))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    _legend(ax)


def set_ratio_axis(ax, ratios: Sequence[float]) -> None:
    """Log-2 λ axis with a tick at every λ that was run, labelled as plain numbers (0.25, 1, 4)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ratios), [format_value(r) for r in ratios])
    ax.minorticks_off()
    ax.set_xlabel("λ (learning rate of B / learning rate of A)")


def plot_against_ratio(
    arms: Sequence[Arm], keys: Sequence[str], path: Path, title: str, final_diagnostics: bool = False
) -> Path:
    """Each metric (or final diagnostic) against λ on a log axis; mean over seeds, bars = std."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        if final_diagnostics:
            value_of = lambda arm, key=key: [r.final_diagnostics().get(key, math.nan) for r in arm.runs]  # noqa: E731
        else:
            value_of = lambda arm, key=key: arm.values(key)  # noqa: E731
        _against_ratio(ax, arms, value_of, METRIC_TITLES.get(key, key))
        ax.set_title(": ".join(filter(None, [title, METRIC_TITLES.get(key, key)])), fontsize=9)
    return save_figure(fig, path)


def plot_steps_to_target(rows: Sequence[tuple[str, float | None]], path: Path, title: str) -> Path:
    """Horizontal bars: mean steps to reach the baseline's final eval loss; 'not reached' written instead."""
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.5), dpi=110)
    labels = [label for label, _ in rows]
    values = [steps if steps is not None else 0.0 for _, steps in rows]
    ax.barh(range(len(rows)), values, color="tab:blue")
    for i, (_, steps) in enumerate(rows):
        if steps is None:
            ax.text(0, i, " not reached", va="center", fontsize=8, color="tab:red")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("optimizer steps to reach the baseline's final eval loss (mean over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def plot_delta_ranks(blocks_by_arm: dict[str, dict[int, float]], path: Path) -> Path:
    """Mean effective rank of ΔW per transformer block, one line per arm, on a log axis (LoRA ~r, HiRA ~n)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for index, (label, blocks) in enumerate(blocks_by_arm.items()):
        ax.plot(list(blocks), list(blocks.values()), marker="o", ms=3, label=label, color=f"C{index % 10}")
    ax.set_yscale("log")
    ax.set_xlabel("transformer block")
    ax.set_ylabel("effective rank of ΔW (mean over the block's layers)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return save_figure(fig, path)


def plot_heatmap(losses: dict[tuple, float], keys: Sequence[str], path: Path, title: str) -> Path:
    """Validation loss of every cell of a two-key grid (rows: keys[0], columns: keys[1]): '∞' where diverged,
    blank where no run was planned (a grid extended past its edge from one cell)."""
    rows = sorted({dict(cell)[keys[0]] for cell in losses})
    cols = sorted({dict(cell)[keys[1]] for cell in losses})
    grid = np.full((len(rows), len(cols)), np.nan)
    planned = np.zeros(grid.shape, dtype=bool)
    for cell, value in losses.items():
        values = dict(cell)
        where = rows.index(values[keys[0]]), cols.index(values[keys[1]])
        grid[where] = value if math.isfinite(value) else np.nan
        planned[where] = True
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.5, 0.7 * len(rows) + 1.8), dpi=110)
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    for i, j in np.ndindex(grid.shape):
        label = ("∞" if planned[i, j] else "") if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
        ax.text(j, i, label, ha="center", va="center", fontsize=7,
                color="white" if np.isnan(grid[i, j]) or grid[i, j] > np.nanmean(grid) else "black")
    ax.set_xticks(range(len(cols)), [format_value(c) for c in cols])
    ax.set_yticks(range(len(rows)), [format_value(r) for r in rows])
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)
