"""The README's main job (`scripts/quickstart.sh` = `oloraplus sweep configs/quickstart_sweep.yaml`) on the
real SmolLM2-135M, shrunk to a handful of steps: the three arms run, and the table they print and report has
one row each."""

import csv
import json
import math

import pytest
import yaml

from oloraplus.cli.main import main
from tests.conftest import REPO, requires_smollm2

ARMS = {0.25: "olora λ=0.25", 1.0: "olora λ=1", 4.0: "olora λ=4"}  # OLoRA+ refinement, OLoRA, OLoRA+ exploration


def _results_table(report: str) -> list[str]:
    """The report's main table (mean ± std over seeds), header and rule included; the line above it says which
    split and seeds its numbers come from."""
    section = report.split("### Results (mean ± std over seeds)\n\n", 1)[1]
    provenance, table = section.split("\n\n", 2)[:2]
    assert provenance.startswith("Numbers from the test split"), provenance
    return table.splitlines()


@requires_smollm2
@pytest.mark.smollm2
def test_quickstart_sweep_on_smollm2(tmp_path, capsys):
    spec = yaml.safe_load((REPO / "configs" / "quickstart_sweep.yaml").read_text())
    assert spec["base"]["model"] == "smollm2-135m" and spec["base"]["data"] == "builtin:stdlib"
    assert sorted(spec["grid"]["ratio"]) == sorted(ARMS)
    spec["base"].update(max_steps=2, train_size=8, eval_size=4, eval_steps=1, eval_generate=2, max_new_tokens=8,
                        batch_size=2, logging_steps=1)
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = tmp_path / "sweep"
    assert main(["sweep", str(path), "--output", str(sweep)]) == 0

    # The three arms ran: one finished run directory each, with the metrics results.csv reports.
    rows = {float(r["ratio"]): r for r in csv.DictReader((sweep / "results.csv").open())}
    assert sorted(rows) == sorted(ARMS)
    for ratio, row in rows.items():
        run = sweep / "runs" / row["run"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert (run / "adapter" / "adapter_model.safetensors").is_file(), run
        assert metrics["steps"] == 2 and float(row["eval_loss"]) == pytest.approx(metrics["eval_loss"])
        assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0 and row["bleu"] != ""
    assert math.isfinite(float(rows[0.25]["eval_loss"]))  # λ = 1/4, the refinement the README highlights

    # The report's table has one row per arm, with that arm's eval loss; the command printed the same table.
    table = _results_table((sweep / "report.md").read_text())
    assert table[0] == "| method | seeds | eval loss | ROUGE-1 | ROUGE-2 | ROUGE-L | corpus BLEU |"
    cells = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ") for line in table[2:]}
    assert sorted(cells) == sorted(ARMS.values()) and len(table) == 2 + len(ARMS)
    for ratio, label in ARMS.items():
        assert cells[label][1] == "1" and cells[label][2] == f"{float(rows[ratio]['eval_loss']):.4f}", label
    assert "\n".join(table) in capsys.readouterr().out
