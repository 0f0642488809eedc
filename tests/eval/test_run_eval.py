"""`train --eval-generate` and `oloraplus eval RUN_DIR` on a tiny model."""

import json

import pytest

from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.eval.textmetrics import generation_metrics
from oloraplus.train.recipe import train


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, alpaca_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), rank=4, alpha=8, lr=3e-3,
                      max_steps=6, batch_size=4, max_length=64, train_size=40, eval_size=10, eval_generate=6,
                      max_new_tokens=8))
    return out


def test_train_eval_generate_writes_generations_and_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["generated_examples"] == 6
    recomputed = generation_metrics([r["generation"] for r in rows], [r["reference"] for r in rows])
    for key in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert metrics[key] == pytest.approx(recomputed[key])
    assert {"prompt", "reference", "generation", "bleu", "rougeL"} <= set(rows[0])


def test_eval_command_reloads_the_adapter_and_reproduces_eval_loss(run_dir, capsys):
    before = json.loads((run_dir / "metrics.json").read_text())
    assert main(["eval", str(run_dir), "--generate", "6", "--max-new-tokens", "8"]) == 0
    after = json.loads((run_dir / "metrics.json").read_text())
    # reloaded onto the untouched base, the adapter gives the in-memory model's loss and generations
    assert after["eval_loss"] == pytest.approx(before["eval_loss"], abs=1e-5)
    assert after["bleu"] == pytest.approx(before["bleu"], abs=1e-6)
    assert f"eval loss {after['eval_loss']:.4f}" in capsys.readouterr().out


def test_eval_of_a_non_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not an oloraplus run" in capsys.readouterr().err
