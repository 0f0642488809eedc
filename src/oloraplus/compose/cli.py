"""`oloraplus compose RUN_OR_ADAPTER... --output DIR [--weights w1,w2] [--dry-run]`.

Prints the interference diagnostic, writes it to DIR (interference.json + heatmap), and, unless
--dry-run, the summed adapter to DIR/adapter/ plus DIR/compose.json recording what went in.
Also the `compose-study` command's flags and entry point (the study itself: `study.py`).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

from typing import TYPE_CHECKING

from oloraplus import __version__, rundir
from oloraplus.compose import INTERFERENCE_FILE
from oloraplus.compose.study import run_study
from oloraplus.errors import AdapterError, ConfigError
from oloraplus.experiments.executor_config import add_executor_arguments, executor_options
from oloraplus.io import atomic_write_text
from oloraplus.paths import portable_command

if TYPE_CHECKING:  # torch: imported once the flags and --output have been checked
    from oloraplus.adapters.adapter_dir import Adapter

COMPOSE_FILE = "compose.json"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """`--weights w1,w2,...`: exactly one finite decimal number per input, or None for all 1."""
    if text is None:
        return None
    values = []
    for item in text.split(","):
        item = item.strip()
        if not _NUMBER.fullmatch(item):
            raise ConfigError(f"--weights: {item!r} is not a number (expected e.g. --weights 1,0.5)")
        values.append(float(item))
    if len(values) != count:
        raise ConfigError(f"--weights: {len(values)} values for {count} adapters")
    return values


def _summary(adapters: list[Adapter], weights: list[float], labels: list[str]) -> str:
    width = max(8, *(len(label) for label in labels))
    lines = [f"{'adapter':<{width}}  {'weight':>7}  {'rank':>5}  {'layers':>6}  {'method':<8}  fingerprint"]
    for label, adapter, w in zip(labels, adapters, weights):
        rank = max(f.r for f in adapter.modules.values())
        lines.append(
            f"{label:<{width}}  {w:>7g}  {rank:>5}  {len(adapter.modules):>6}  "
            f"{adapter.method or '-':<8}  {adapter.fingerprint or '-'}"
        )
    return "\n".join(lines)


def _check_output(output: Path, dry_run: bool) -> None:
    """Refuse before writing anything: a training run or others' files, or (unless dry run) an earlier composition."""
    rundir.check_output_dir(output, what="composition", own=(COMPOSE_FILE, INTERFERENCE_FILE))
    if dry_run:
        return
    adapter_dir = output / rundir.ADAPTER_DIR
    if (adapter_dir.exists() and any(adapter_dir.iterdir())) or (output / COMPOSE_FILE).exists():
        raise AdapterError(f"--output {output}: already holds a composed adapter; choose a new directory")


def compose_command(inputs: list[str], output: str, weights: str | None, dry_run: bool) -> int:
    """Diagnose and sum adapters; returns 0 (user errors raise OloraError for the CLI to print)."""
    if not inputs:
        raise ConfigError("compose: give at least one run or adapter directory")
    values = parse_weights(weights, len(inputs))
    out = Path(output)
    _check_output(out, dry_run)
    from oloraplus.compose.interference import format_table, interference, write_interference
    from oloraplus.adapters.adapter_dir import read_adapter
    from oloraplus.compose.sum import sum_adapters, write_adapter

    adapters = [read_adapter(source) for source in inputs]
    config, tensors = sum_adapters(adapters, values)  # also refuses incompatible adapters
    values = values or [1.0] * len(adapters)
    result = interference(adapters)
    print(_summary(adapters, values, result.names))
    print(f"\nRMS over {len(result.layers)} layers of the pairwise cosine of ΔW (0 = orthogonal, 1 = same direction):")
    print(format_table(result))
    json_path, png_path = write_interference(result, out)
    print(f"\nwrote {json_path} and {png_path}")
    if dry_run:
        print("dry run: no adapter written")
        return 0
    fingerprints = [a.fingerprint for a in adapters]
    recorded = [fp for fp in fingerprints if fp]
    meta = {
        "base_fingerprint": recorded[0] if recorded else None,
        "base_model": next((a.base_model for a in adapters if a.base_model), None),
        "method": "compose",
    }
    adapter_dir = write_adapter(config, tensors, out / rundir.ADAPTER_DIR, meta=meta)
    record = {
        "inputs": [
            {"source": a.source, "adapter_dir": str(a.path), "name": label, "method": a.method, "r": a.config.get("r")}
            for a, label in zip(adapters, result.names)
        ],
        "weights": values,
        "fingerprints": fingerprints,
        "base_fingerprint": meta["base_fingerprint"],
        "base_model": meta["base_model"],
        "rank": config["r"],
        "rank_pattern": config["rank_pattern"],
        "overall_rms_cosine": result.overall.tolist(),
        "oloraplus_version": __version__,
    }
    atomic_write_text(out / COMPOSE_FILE, json.dumps(record, indent=2) + "\n")
    print(f"wrote {adapter_dir} (LoRA rank {config['r']}, ΔW = Σ w_i ΔW_i) and {out / COMPOSE_FILE}")
    return 0


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.yaml", help="the study definition")
    parser.add_argument("--output", required=True, metavar="DIR", help="study directory (created; reused to resume)")
    add_executor_arguments(parser)


def study_command(args: argparse.Namespace) -> int:
    executor = executor_options(args)
    command = portable_command(shlex.join(["oloraplus", "compose-study", args.spec, "--output", args.output]))
    result = run_study(args.spec, args.output, command=command, executor=executor)
    for row in result["sums"]:
        cos = "" if row["rms_cosine"] is None else f"  RMS cos {row['rms_cosine']:.4f}"
        print(f"{row['sum']:<30} change vs {row['baseline']}: {row['change_pct']:+.2f} %{cos}")
    print(f"\nreport: {Path(args.output) / 'study.md'}")
    return 0
