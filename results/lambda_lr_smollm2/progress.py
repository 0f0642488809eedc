"""Carry a partly run experiment between machines: keep its finished stage-1 runs as small records, restore them.

The experiment takes about 6 CPU-hours on 2 cores (README.md), longer than one working session, and a sweep
directory holds a 75 MB adapter per run. A selection run is done for good once its validation loss is known, so
its record (config.yaml, metrics.json, log.jsonl, with this machine's paths made portable) is what the next
machine needs: restored into a sweep directory, the sweep sees it as finished (same config) and trains only the
rest. Run from the repository root:

    python results/lambda_lr_smollm2/progress.py keep sweeps/lambda_lr     # -> select_runs/ here
    python results/lambda_lr_smollm2/progress.py restore sweeps/lambda_lr  # then: oloraplus sweep ... --output sweeps/lambda_lr
    python results/lambda_lr_smollm2/progress.py table                     # the kept cells so far (README.md)

`table` prints each method's validation losses so far as an η_A × λ table and writes its heat map
(interim-<method>.png; blank: not run yet). One selection seed: a direction, not a verdict.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "select_runs"
RESULTS = "select_results.csv"  # beside the records: the kept runs' row each, as the sweep's select/results.csv had them
KEPT = ("metrics.json", "log.jsonl")


def keep(sweep: Path, records: Path = RECORDS) -> list[str]:
    """Copy every finished stage-1 run's record from `sweep`; returns the names kept."""
    kept = []
    for run in sorted((sweep / "select" / "runs").iterdir()):
        if run.name.endswith(".partial") or not (run / "metrics.json").is_file():
            continue  # unfinished: it restarts on the next machine
        target = records / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copyfile(run / name, target / name)
        record = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        record["config"]["output"] = f"sweeps/lambda_lr/select/runs/{run.name}"  # never compared on resume
        record["model_path"] = f"~/.cache/oloraplus/models/{Path(record['model_path']).name}"
        (target / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
        kept.append(run.name)
    shutil.copyfile(sweep / "select" / "results.csv", records.parent / RESULTS)
    return kept


def restore(sweep: Path, records: Path = RECORDS) -> list[str]:
    """Copy the kept records into `sweep`/select/runs, never over a run already there; returns the names copied."""
    runs = sweep / "select" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results = runs.parent / "results.csv"  # marks select/ as a sweep directory, so the sweep resumes there
    if not results.exists():
        shutil.copyfile(records.parent / RESULTS, results)
    copied = []
    for record in sorted(p for p in records.iterdir() if p.is_dir()):
        if (runs / record.name).exists():
            continue
        shutil.copytree(record, runs / record.name)
        copied.append(record.name)
    return copied


def table(records: Path = RECORDS, images: Path = HERE) -> str:
    """Each method's kept validation losses as a Markdown η_A × λ table, and its heat map in `images`."""
    from oloraplus.experiments import plots
    from oloraplus.markdown import markdown_table

    cells: dict[str, dict[tuple, float]] = {}
    for record in sorted(p for p in records.iterdir() if p.is_dir()):
        config = yaml.safe_load((record / "config.yaml").read_text(encoding="utf-8"))["config"]
        loss = json.loads((record / "metrics.json").read_text(encoding="utf-8")).get("val_eval_loss")
        cells.setdefault(config["method"], {})[(("lr", config["lr"]), ("ratio", config["ratio"]))] = (
            float(loss) if isinstance(loss, (int, float)) else float("inf"))
    out = []
    for method, losses in cells.items():
        ratios = sorted({dict(c)["ratio"] for c in losses})
        rows = [[f"{lr:g}", *(_cell(losses.get((("lr", lr), ("ratio", r)))) for r in ratios)]
                for lr in sorted({dict(c)["lr"] for c in losses})]
        out += [f"{method}: validation loss, seed 1 ({len(losses)} cells)", "",
                markdown_table(["η_A \\ λ", *(f"{r:g}" for r in ratios)], rows), ""]
        plots.plot_heatmap(losses, ("lr", "ratio"), images / f"interim-{method}.png",
                           f"{method}: validation loss so far (seed 1)")
    return "\n".join(out)


def _cell(loss: float | None) -> str:
    return "" if loss is None else ("diverged" if loss == float("inf") else f"{loss:.4f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["table"]:
        print(table())
        sys.exit(0)
    if len(sys.argv) != 3 or sys.argv[1] not in ("keep", "restore"):
        sys.exit(f"usage: python {sys.argv[0]} keep|restore SWEEP_DIR, or table")
    names = (keep if sys.argv[1] == "keep" else restore)(Path(sys.argv[2]))
    print(f"{sys.argv[1]}: {len(names)} run(s)")
