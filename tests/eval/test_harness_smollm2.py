"""`oloraplus eval RUN_DIR --harness gsm8k_local` end to end: lm_eval generates with SmolLM2 + adapter.

Skipped unless lm_eval is importable (`pip install "oloraplus[harness]"`; CI does not install it). Checks
that lm_eval scores what the shipped task's regex and exact_match say (test_harness_task.py checks those).
"""

import json

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

from oloraplus import models
from oloraplus.cli.main import main
from oloraplus.eval.harness import extract_answer, normalise, reference_answer, task_config
from tests.conftest import SHARED_DATA, requires_smollm2

pytest.importorskip("lm_eval")
GSM8K = SHARED_DATA / "gsm8k_test.jsonl"
pytestmark = [requires_smollm2, pytest.mark.smollm2,
              pytest.mark.skipif(not GSM8K.is_file(), reason="../shared/data/gsm8k_test.jsonl absent")]
EASY = {"question": "Tom has 5 apples. How many apples does Tom have?", "answer": "Tom has 5 apples.\n#### 5"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A SmolLM2 run whose adapter is small but not zero (PEFT's default B = 0 would be the base itself)."""
    loaded = models.load_model("smollm2-135m", device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                         target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.01)
    run = tmp_path_factory.mktemp("runs") / "run"
    peft_model.save_pretrained(run / "adapter", safe_serialization=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {"model": "smollm2-135m"}}))
    (run / "metrics.json").write_text(json.dumps({"eval_loss": 2.5}))
    return run


def test_gsm8k_through_lm_eval(run_dir, tmp_path, capsys):
    records = [EASY] + [json.loads(line) for line in GSM8K.read_text().splitlines()[:2]]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records + [EASY]))  # the 4th is cut by --harness-limit
    argv = ["eval", str(run_dir), "--harness", "gsm8k_local", "--harness-data", str(data), "--harness-limit", "3",
            "--max-new-tokens", "32", "--device", "cpu"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("gsm8k_local: ")

    stored = json.loads((run_dir / "metrics.json").read_text())
    result = stored["harness"]["gsm8k_local"]
    assert stored["eval_loss"] == 2.5  # merged, not replaced
    assert result["n"] == 3 and result["limit"] == 3 and result["chat_template"] is True

    config = task_config("gsm8k_local")
    rows = [json.loads(line) for line in (run_dir / "harness_samples.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2]
    for row, record in zip(rows, records):
        assert record["question"] in row["prompt"] and row["prompt"].rstrip().endswith("assistant")
        assert row["generation"].strip()
        assert normalise(row["extracted"], config) == extract_answer(row["generation"], config)
        assert normalise(row["target"], config) == reference_answer(record, config)
        right = extract_answer(row["generation"], config) == reference_answer(record, config)
        assert row["exact_match"] == float(right)
    assert result["exact_match,final-number"] == pytest.approx(sum(r["exact_match"] for r in rows) / 3)
    assert rows[0]["exact_match"] == 1.0, rows[0]["generation"]  # even SmolLM2 gets this one
