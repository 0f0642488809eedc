"""Restate this folder's comparisons under the report's current rules, from the committed results.csv.

Every arm against OLoRA (λ = 1) on the final eval loss, paired by seed: the paired t-test
(`stats.paired_t_interval`), Holm-adjusted over the family of those comparisons (`stats.holm`), with each
difference's simultaneous interval over the family (`stats.adjusted_level`, Bonferroni); then the same
with seed 1 left out, since seed 1 also chose each arm's learning rate. Prints a Markdown table:

    python results/methods_smollm2/holm.py > results/methods_smollm2/holm.md
"""

from __future__ import annotations

import csv
from pathlib import Path

from oloraplus.experiments import stats
from oloraplus.markdown import markdown_table

HERE = Path(__file__).resolve().parent


def arms() -> dict[str, dict[int, float]]:
    """'olora λ=1 (lr 0.0003)' -> seed -> eval loss, one entry per (method, λ, lr, OHoRA init)."""
    out: dict[str, dict[int, float]] = {}
    with open(HERE / "results.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            init = f" {row['ohora_init']}" if row["method"] == "ohora" else ""
            label = f"{row['method']}{init} λ={float(row['ratio']):g} (lr {float(row['lr']):g})"
            out.setdefault(label, {})[int(row["seed"])] = float(row["eval_loss"])
    return out


def table(seeds: list[int]) -> str:
    runs = arms()
    base = next(label for label in runs if label.startswith("olora λ=1 "))
    rows, intervals = [], []
    for label, by_seed in runs.items():
        if label == base:
            continue
        pairs = [by_seed[s] for s in seeds], [runs[base][s] for s in seeds]
        intervals.append((label, stats.paired_t_interval(*pairs), pairs))
    adjusted = stats.holm([i.p for _, i, _ in intervals])
    level = stats.adjusted_level(len(intervals))
    for (label, i, pairs), p_holm in zip(intervals, adjusted):
        wide = stats.paired_t_interval(*pairs, level=level)
        verdict = stats.verdict(i, higher_is_better=False, adjusted_p=p_holm)
        if len(seeds) < stats.MIN_SEEDS:
            verdict = stats.TOO_FEW
        rows.append([label, f"{i.mean:+.4f}", f"[{i.low:+.4f}, {i.high:+.4f}]", f"[{wide.low:+.4f}, {wide.high:+.4f}]",
                     f"{i.p:.3f}", f"{p_holm:.3f}", verdict])
    return (f"Against {base}, seeds {', '.join(map(str, seeds))} ({len(intervals)} comparisons, Holm):\n\n"
            + markdown_table(["arm", "Δ eval loss", "95% CI (per comparison)", "adjusted CI (simultaneous)", "p",
                              "Holm p", "verdict"], rows))


if __name__ == "__main__":
    print(table([1, 2, 3]))
    print()
    print(table([2, 3]))
