"""examples/: the three scripts (TRL SFTTrainer, plain Trainer with an optuna search, an accelerate loop) run on a
tiny Llama and leave an adapter that reproduces the trained model on the untouched base."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TINY = ["--rank", "4", "--alpha", "8", "--lr", "1e-2", "--max-steps", "3", "--batch-size", "4", "--max-length", "64"]


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as `python examples/x.py` runs: its folder on sys.path
    return lambda name: importlib.import_module(name)


def _args(tiny_llama_dir, alpaca_file, out, *extra) -> list[str]:
    return ["--model", str(tiny_llama_dir), "--data", str(alpaca_file), *TINY, "--output", str(out), *extra]


def test_trl_example(examples, tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    pytest.importorskip("trl")
    result = examples("trl_sft").main(_args(tiny_llama_dir, alpaca_file, tmp_path / "trl", "--packing"))
    assert result["train_loss"] > 0 and result["reload_max_abs_logit_diff"] < 1e-5
    assert json.loads((tmp_path / "trl" / "adapter_config.json").read_text())["r"] == 8  # OLoRA: base-relative 2r


def test_hf_trainer_example_and_its_search(examples, tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    script = examples("hf_trainer")
    result = script.main(_args(tiny_llama_dir, alpaca_file, tmp_path / "trainer", "--method", "pissa"))
    assert result["train_loss"] > 0 and result["reload_max_abs_logit_diff"] < 1e-5
    pytest.importorskip("optuna")
    search = script.main(_args(tiny_llama_dir, alpaca_file, tmp_path / "search", "--search", "2"))
    assert set(search["best"]) == {"ratio", "learning_rate"} and search["best_eval_loss"] > 0


def test_accelerate_example(examples, tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    result = examples("accelerate_loop").main(_args(tiny_llama_dir, alpaca_file, tmp_path / "loop", "--method", "eva"))
    assert result["reload_max_abs_logit_diff"] < 1e-5 and result["last_loss"] > 0
    assert (tmp_path / "loop" / "adapter_model.safetensors").is_file()


def test_example_bad_input_is_one_line_exit_2(examples, tiny_llama_dir, alpaca_file, tmp_path, monkeypatch, capsys):
    """As the scripts run from a shell (`run(main)`), before the model loads."""
    script = examples("hf_trainer")
    monkeypatch.setattr(sys, "argv", ["hf_trainer.py", *_args(tiny_llama_dir, alpaca_file, tmp_path / "bad",
                                                              "--ratio", "0")])
    with pytest.raises(SystemExit) as caught:
        script.run(script.main)
    assert caught.value.code == 2
    assert capsys.readouterr().err == "hf_trainer.py: error: --ratio: λ must be a finite number > 0, got 0.0\n"
    assert not (tmp_path / "bad").exists()
