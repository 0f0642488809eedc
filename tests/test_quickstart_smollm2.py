"""The README's main job (`scripts/quickstart.sh` = `oloraplus sweep configs/quickstart_sweep.yaml`) on the
real SmolLM2-135M, shrunk to a handful of steps."""

import csv

import pytest
import yaml

from oloraplus.cli.main import main
from tests.conftest import REPO, requires_smollm2


@requires_smollm2
@pytest.mark.smollm2
def test_quickstart_sweep_on_smollm2(tmp_path, capsys):
    spec = yaml.safe_load((REPO / "configs" / "quickstart_sweep.yaml").read_text())
    assert spec["base"]["model"] == "smollm2-135m" and spec["base"]["data"] == "builtin:stdlib"
    spec["base"].update(max_steps=2, train_size=8, eval_size=4, eval_steps=1, eval_generate=2, max_new_tokens=8,
                        batch_size=2, logging_steps=1)
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--output", str(tmp_path / "sweep")]) == 0
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    assert sorted(float(r["ratio"]) for r in rows) == [0.25, 1.0, 4.0]
    assert all(float(r["eval_loss"]) > 0 and r["bleu"] != "" for r in rows)
    assert (tmp_path / "sweep" / "report.md").is_file()
    out = capsys.readouterr().out
    assert "eval loss" in out.lower()
