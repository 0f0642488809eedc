"""A report made anywhere shows no absolute path of this machine (it may be committed)."""

import json
from pathlib import Path

from experiment_helpers import write_run

from oloraplus.experiments.report import write_report


def test_report_made_in_tmp_dir_has_no_absolute_path(tmp_path: Path, monkeypatch):
    sweep, model = tmp_path / "sweep", str(tmp_path / "models" / "tiny")
    for ratio in (1.0, 4.0):
        write_run(sweep / "runs" / f"r{ratio}", {"model": model, "method": "olora", "ratio": ratio, "seed": 1},
                  {"method": "olora", "ratio": ratio, "eval_loss": 2.0 / ratio, "steps": 10})
    (sweep / "sweep.json").write_text(json.dumps(
        {"command": f"oloraplus sweep {tmp_path}/s.yaml --output {sweep}", "runs": [{"name": "r1.0"}, {"name": "r4.0"}]}))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = write_report(sweep).read_text(encoding="utf-8")
    assert "Made by `oloraplus sweep s.yaml --output sweep`" in text
    assert "## Model: tiny" in text
    assert str(tmp_path) not in text and "/tmp" not in text
