"""The numbers a compose study reports: pooled perplexity, each sum's change against its merged-data baseline,
the least-squares line of that change against the RMS cosine (Cao et al.'s claim), and its scatter plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from oloraplus.compose.study_spec import MERGED, StudySpec, label, sums


def pooled(scores: dict[str, dict], domains: Sequence[str]) -> float:
    """Perplexity over the union of the domains' held-out sets: token-weighted, like evaluate_loss."""
    tokens = sum(scores[d]["eval_tokens"] for d in domains)
    nll = sum(scores[d]["eval_loss"] * scores[d]["eval_tokens"] for d in domains)
    return math.exp(nll / tokens) if nll / tokens < 700 else math.inf


def change_pct(value: float, reference: float) -> float:
    return 100.0 * (value / reference - 1.0)


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Least-squares y = slope·x + intercept and R²; R² is undefined below three points or for constant y."""
    import numpy as np

    if len(x) < 2 or len(set(x)) < 2:
        return {"points": len(x), "slope": None, "intercept": None, "r2": None}
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    residual = np.asarray(y) - (slope * np.asarray(x) + intercept)
    total = float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if len(x) >= 3 and total > 0 else None
    return {"points": len(x), "slope": float(slope), "intercept": float(intercept), "r2": r2}


def compare(spec: StudySpec, ppl: dict[str, dict], overall: list[list[float]]) -> list[dict[str, Any]]:
    """Each sum against its merged-data baseline on the domains it covers (Cao et al.'s perplexity change)."""
    index = {name: i for i, name in enumerate(spec.names)}
    rows = []
    for subset in sums(spec.names):
        key = label(subset)
        baseline = MERGED if spec.baseline == "all" or len(subset) == len(spec.names) else f"{MERGED}-{key}"
        rows.append({
            "sum": key, "domains": list(subset), "baseline": baseline,
            "rms_cosine": overall[index[subset[0]]][index[subset[1]]] if len(subset) == 2 else None,
            "perplexity_sum": pooled(ppl[key], subset), "perplexity_baseline": pooled(ppl[baseline], subset),
            "per_domain_change_pct": {d: change_pct(ppl[key][d]["perplexity"], ppl[baseline][d]["perplexity"])
                                      for d in subset},
        })
        rows[-1]["change_pct"] = change_pct(rows[-1]["perplexity_sum"], rows[-1]["perplexity_baseline"])
    return rows


def plot_scatter(pairs: list[dict[str, Any]], fit: dict[str, Any], path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, y = [p["rms_cosine"] for p in pairs], [p["change_pct"] for p in pairs]
    ax.scatter(x, y, zorder=3)
    for p in pairs:
        ax.annotate(p["sum"], (p["rms_cosine"], p["change_pct"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    if fit["slope"] is not None:
        xs = np.linspace(min(x), max(x), 50)
        r2 = f"R² = {fit['r2']:.3f}" if fit["r2"] is not None else f"R² undefined ({fit['points']} points)"
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], "--", label=f"least squares, {r2}")
        ax.legend(fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("RMS over layers of cos(ΔW_i, ΔW_j)")
    ax.set_ylabel("perplexity change vs merged-data adapter (%)")
    ax.set_title("Pairwise adapter sums (Cao et al.)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
