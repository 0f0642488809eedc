"""`oloraplus report DIR --delta-rank` on a real tiny sweep: a rank-r LoRA stays ≤ r, HiRA goes above."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from oloraplus.cli.main import build_parser
from oloraplus.eval import delta_rank

RANK = 4


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _row(report: str, label: str) -> list[str]:
    section = report.split("### Effective rank of the learned update ΔW", 1)[1]
    line = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_adds_the_effective_rank_of_each_arms_update(tiny_llama_dir, alpaca_file, tmp_path, monkeypatch,
                                                            one_thread):
    spec = {"base": {"model": str(tiny_llama_dir), "data": str(alpaca_file), "rank": RANK, "alpha": 8, "lr": 1e-2,
                     "max_steps": 3, "batch_size": 4, "max_length": 64, "train_size": 16, "eval_size": 8},
            "grid": {"method": ["lora", "hira"]}, "baseline": {"method": "lora"}}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert _cli(["sweep", str(sweep), "--output", str(out)]) == 0
    assert "Effective rank" not in (out / "report.md").read_text()  # opt-in

    assert _cli(["report", str(out), "--delta-rank"]) == 0

    report = (out / "report.md").read_text()
    lora, hira = _row(report, "lora λ=1"), _row(report, "hira λ=1")
    assert len(lora) == len(hira) == 2 + 7  # label, all layers, q k v o gate up down
    assert 1.0 <= float(lora[1]) <= RANK  # B·A has rank ≤ r
    assert float(hira[1]) > RANK  # W0 ⊙ (B·A): the Hadamard product lifts it
    assert re.search(r"!\[effective rank of ΔW per block\]\(plots/delta-rank\.png\)", report)
    assert (out / "plots" / "delta-rank.png").stat().st_size > 0
    cache = json.loads((out / "delta_rank.json").read_text())
    assert sorted(cache) == ["method-hira", "method-lora"]

    def not_again(run_dir):
        raise AssertionError(f"recomputed {run_dir}")

    monkeypatch.setattr(delta_rank, "run_delta_ranks", not_again)
    assert _cli(["report", str(out), "--delta-rank"]) == 0  # both runs come from the cache
    assert (out / "report.md").read_text() == report
