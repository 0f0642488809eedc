"""The report's optional section: effective rank of each layer's learned ΔW per arm (OHoRA paper, Figure 3).

Opt-in (`oloraplus report DIR --delta-rank`) because it reloads the base model for every run and merges
the run's adapter in float64 (`eval/delta_rank.py`): about 15 s per SmolLM2-135M run on 2 CPU cores. The ranks
are cached in DIR/delta_rank.json, keyed by run name and stamped with the adapter file's size and mtime,
so a second report computes only new or retrained runs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Sequence

from oloraplus.adapters.files import WEIGHTS_FILE
from oloraplus.experiments.runs import Arm, Run
from oloraplus.io import atomic_write_json
from oloraplus.rundir import ADAPTER_DIR

CACHE_FILE = "delta_rank.json"
WEIGHTS = f"{ADAPTER_DIR}/{WEIGHTS_FILE}"


def _stamp(run: Run) -> str:
    info = (run.path / WEIGHTS).stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def collect(directory: Path, runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """{run name: {layer: effective rank of ΔW}} for every trained run, computing only what the cache lacks."""
    from oloraplus.eval.delta_rank import run_delta_ranks  # torch and the model: only when asked for

    path = directory / CACHE_FILE
    cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    ranks = {}
    for run in runs:
        if run.diverged or not (run.path / WEIGHTS).is_file():
            continue
        entry, stamp = cache.get(run.name), _stamp(run)
        if not isinstance(entry, dict) or entry.get("stamp") != stamp:
            # [layer, rank] pairs, not a mapping: the JSON writer sorts keys, and the model's layer order is kept
            entry = {"stamp": stamp, "ranks": list(run_delta_ranks(run.path).items())}
            cache[run.name] = entry
            atomic_write_json(path, cache)  # after each run: an interrupted report keeps what it computed
        ranks[run.name] = dict(entry["ranks"])
    return ranks


def arm_ranks(arms: Sequence[Arm], ranks: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{arm label: layer-wise mean over its seeds} for the arms with ranks."""
    from oloraplus.eval.delta_rank import mean_over_runs  # the eval package imports torch

    pooled = {arm.label: mean_over_runs([ranks[r.name] for r in arm.runs if r.name in ranks]) for arm in arms}
    return {label: layers for label, layers in pooled.items() if layers}


def section(arms: Sequence[Arm], ranks: dict[str, dict[str, float]], plot_path: Path, plot_link: str) -> list[str]:
    """Markdown: mean effective rank per layer role and overall, per arm, and the per-block figure."""
    from oloraplus.eval.delta_rank import kind_of, per_block, per_kind
    from oloraplus.experiments import plots
    from oloraplus.markdown import markdown_table

    by_arm = arm_ranks(arms, ranks)
    if not by_arm:
        return []
    kinds = list(dict.fromkeys(kind_of(layer) for layers in by_arm.values() for layer in layers))
    rows = []
    for label, layers in by_arm.items():
        kind_means = per_kind(layers)
        rows.append([label, f"{statistics.fmean(layers.values()):.1f}",
                     *(f"{kind_means[k]:.1f}" if k in kind_means else "–" for k in kinds)])
    plots.plot_delta_ranks({label: per_block(layers) for label, layers in by_arm.items()}, plot_path)
    return ["### Effective rank of the learned update ΔW", "",
            "ΔW = W_merged − W₀ of every adapted layer at the end of training (the adapter merged into the "
            "base in float64), effective rank = exp(entropy of its normalised singular values) (Roy & Vetterli), "
            "mean over seeds, then over layers (OHoRA paper, Figure 3). A rank-r LoRA update is at most r "
            "(2r for the base-shifting inits, whose ΔW includes −s·B₀A₀).", "",
            markdown_table(["method", "all layers", *kinds], rows), "",
            f"![effective rank of ΔW per block]({plot_link})", ""]
