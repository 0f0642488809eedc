"""What the three examples share: their flags, the Alpaca records as prompt/completion pairs and as token ids, and
the check that the saved adapter reproduces the trained model on the untouched base.

Only the adapter, optimizer and saving come from oloraplus; data, model and loop are the usual transformers ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedTokenizerBase


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="smollm2-135m", help="local HF model dir, hub id, or oloraplus's alias")
    p.add_argument("--data", required=True, help="Alpaca JSON/JSONL file (instruction, input, output)")
    p.add_argument("--method", default="olora", help="any oloraplus method: olora, lora, pissa, dora, ...")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--ratio", type=float, default=4.0, help="λ: B factors learn at λ × --lr")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", required=True, help="directory for the adapter (PEFT format)")
    return p


def model_path(name: str) -> str:
    from oloraplus.models import resolve_model_path

    return resolve_model_path(name)  # an alias such as smollm2-135m, a local directory or a hub id


def load_base(path: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer


def prompt_completion(path: str | Path) -> list[dict[str, str]]:
    """Alpaca records as {"prompt", "completion"}: TRL's prompt-completion form (completion-only loss)."""
    text = Path(path).read_text(encoding="utf-8")
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l]
    return [{"prompt": f"{r['instruction']}\n{r.get('input', '')}".strip() + "\n", "completion": r["output"]}
            for r in records]


def tokenized(pairs: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
    """input_ids with labels −100 on the prompt: the loss is on the completion (and its EOS) only."""
    rows = []
    for pair in pairs:
        prompt = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(pair["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + completion)[:max_length]
        rows.append({"input_ids": ids, "labels": ([-100] * len(prompt) + completion)[:max_length]})
    return rows


def collator(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
    """Pads input_ids, attention_mask and labels (−100); returns plain dicts, which EVA's calibration needs."""
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    return lambda rows: dict(pad(rows))


def reload_check(trained: torch.nn.Module, adapter_dir: str | Path, base_path: str) -> dict[str, float]:
    """The saved adapter on a fresh, untouched base (plain PEFT) against the trained model, both evaluated in
    float64: the largest logit difference (what the float32 shifted base W − s·B0·A0 lost to rounding, which no
    adapter can carry) and the largest logit, for scale. In float32 the evaluation's own rounding, amplified over
    a deep model's layers, adds more than that (up to ~5e-4 of the largest logit on SmolLM2-135M)."""
    import copy

    from peft import PeftModel

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float64),
                                       str(adapter_dir)).double().eval()  # the adapter too
    reference = copy.deepcopy(trained).cpu().double().eval()
    ids = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        expected, got = reference(input_ids=ids).logits, loaded(input_ids=ids).logits
    return {"reload_max_abs_logit_diff": (got - expected).abs().max().item(),
            "max_abs_logit": expected.abs().max().item()}


def run(main: Callable[[list[str] | None], dict[str, Any]]) -> None:
    """As `oloraplus`'s CLI: a mistake the user can fix is one line and exit code 2."""
    from oloraplus.errors import OloraError

    try:
        print(json.dumps(main(None)))
    except OloraError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
