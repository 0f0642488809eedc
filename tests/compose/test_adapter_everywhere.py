"""Adapters that are not oloraplus runs work in `generate`, `eval` and `export`: two plain-PEFT adapters composed
with `oloraplus compose`, and a plain-PEFT adapter alone, on a tiny Llama saved as a model directory.

The reference is PEFT's own: each adapter loaded with `PeftModel.from_pretrained` and merged into the base in turn
(W + ΔW_a + ΔW_b), never oloraplus's sum or loader.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from compose_helpers import LLAMA_TARGETS, Base, make_adapter
from peft import PeftModel
from transformers import AutoModelForCausalLM

from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.eval.chat import chat_prompt, load_for_generation
from oloraplus.eval.generate import generate_batched
from oloraplus.models import base_fingerprint, load_model

PROMPTS = ["Explain what the function does.", "Return the sum of a list of numbers."]


def _base(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(3))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    """Two plain-PEFT adapters on the tiny Llama directory (no oloraplus metadata), their composition, and PEFT's
    own W + ΔW_a + ΔW_b."""
    root = tmp_path_factory.mktemp("everywhere")
    model = _base(tiny_llama_dir)
    base = Base(model, base_fingerprint(model), LLAMA_TARGETS, conv1d=False)
    for name, seed in (("a", 1), ("b", 2)):
        make_adapter(base, root / name, r=4, alpha=8, seed=seed, write_meta=False)
    assert json.loads((root / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_llama_dir)  # what plain PEFT records: the base it was loaded from
    assert main(["compose", str(root / "a"), str(root / "b"), "--output", str(root / "composed")]) == 0
    reference = _base(tiny_llama_dir)
    for name in ("a", "b"):
        reference = PeftModel.from_pretrained(reference, str(root / name)).merge_and_unload()
    return root, reference.eval()


def test_generate_on_a_composed_adapter_is_peft_own_sum(adapters, tiny_llama_dir, capsys):
    root, reference = adapters
    model, tokenizer = load_for_generation(root / "composed", device="cpu")  # what `generate` loads
    torch.testing.assert_close(_logits(model), _logits(reference), atol=1e-5, rtol=0)
    assert not torch.allclose(_logits(reference), _logits(_base(tiny_llama_dir)), atol=1e-2)  # the sum matters

    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    assert main(["generate", str(root / "composed"), "--prompts", str(prompts), "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    replies = [json.loads(line)["response"] for line in capsys.readouterr().out.splitlines()]
    expected = generate_batched(reference, tokenizer, [chat_prompt(tokenizer, p) for p in PROMPTS], max_new_tokens=6)
    assert replies == expected and any(expected)  # not two empty replies


def test_generate_on_a_plain_peft_adapter_and_with_model(adapters, tiny_llama_dir, tmp_path):
    root, _ = adapters
    reference = PeftModel.from_pretrained(_base(tiny_llama_dir), str(root / "a")).eval()
    model, _ = load_for_generation(root / "a", device="cpu")
    torch.testing.assert_close(_logits(model), _logits(reference), atol=1e-6, rtol=0)

    moved = tmp_path / "moved"  # the base it names is gone (another machine): --model points at it
    shutil.copytree(root / "a", moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    model, _ = load_for_generation(moved, device="cpu", model=str(tiny_llama_dir))
    torch.testing.assert_close(_logits(model), _logits(reference), atol=1e-6, rtol=0)


def test_eval_on_a_composed_adapter_writes_nothing_into_it(adapters, tiny_llama_dir, alpaca_file, tmp_path, capsys):
    from oloraplus.data.packing import batch_collator
    from oloraplus.data.prepare import prepare
    from oloraplus.eval.loss import evaluate_loss

    root, reference = adapters
    before = _snapshot(root / "composed")
    assert main(["eval", str(root / "composed"), "--data", str(alpaca_file), "--generate", "2",
                 "--max-new-tokens", "4", "--device", "cpu", "--output", str(tmp_path / "evals")]) == 0
    out = capsys.readouterr().out
    assert _snapshot(root / "composed") == before
    assert "not a run, nothing written" in out
    written = json.loads((tmp_path / "evals" / "eval.json").read_text())
    assert written["eval_loss"] > 0 and (tmp_path / "evals" / "generations.jsonl").is_file()

    # eval's defaults for a bare adapter, --max-length capped at the tiny model's 256 positions
    cfg = replace(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file)), train_size=1, max_length=256)
    prep = prepare(cfg, device=torch.device("cpu"), training=False)
    collator = batch_collator(reference, prep.loaded.tokenizer.pad_token_id, cfg.max_length, cfg.packing)
    loss = evaluate_loss(reference, prep.eval_dataset, collator, batch_size=cfg.batch_size)["eval_loss"]
    assert f"eval loss {loss:.4f}" in out


def test_export_merged_of_a_composed_adapter_is_peft_own_sum(adapters, tmp_path, capsys):
    root, reference = adapters
    assert main(["export", str(root / "composed"), "--format", "merged", "--output", str(tmp_path / "merged")]) == 0
    merged = load_model(str(tmp_path / "merged"), device="cpu").model
    expected = reference.state_dict()
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0, msg=name)


def test_export_gguf_lora_of_a_composed_adapter(adapters, tmp_path):
    gguf = pytest.importorskip("gguf")
    from safetensors.torch import load_file

    root, _ = adapters
    out = tmp_path / "composed.gguf"
    assert main(["export", str(root / "composed"), "--format", "gguf-lora", "--output", str(out)]) == 0
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    saved = load_file(root / "composed" / "adapter" / "adapter_model.safetensors")
    A = saved["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]  # (Σr, in): not permuted
    got = tensors["blk.1.ffn_down.weight.lora_a"]
    assert torch.equal(torch.from_numpy(got.data.reshape(A.shape).copy()), A.float())
    assert len(tensors) == 2 * len(LLAMA_TARGETS) * 2  # lora_a and lora_b per module, 2 blocks
