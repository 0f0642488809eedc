"""Tiny llama / gpt2 bases and PEFT-made LoRA adapters with random non-zero A and B.

`make_adapter` returns each module's ΔW materialised by hand (w/o PEFT's merge code) in the base
weight's own layout, so tests can build the reference model by adding deltas to the weights.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import GPT2Config, GPT2LMHeadModel

from oloraplus.models import base_fingerprint
from tests.conftest import tiny_llama

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


@dataclass
class Base:
    model: torch.nn.Module
    fingerprint: str
    targets: list[str]
    conv1d: bool  # gpt2 keeps weights as (in, out): fan_in_fan_out


def build_llama(seed: int = 0, **overrides) -> Base:
    model = tiny_llama(128, seed, **({"tie_word_embeddings": False} | overrides)).eval()
    return Base(model, base_fingerprint(model), LLAMA_TARGETS, conv1d=False)


def build_gpt2(seed: int = 0) -> Base:
    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    return Base(model, base_fingerprint(model), GPT2_TARGETS, conv1d=True)


def make_adapter(
    base: Base,
    out_dir: Path,
    *,
    r: int,
    alpha: float,
    seed: int,
    use_rslora: bool = False,
    targets: list[str] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    rank_pattern: dict[str, int] | None = None,
    write_meta: bool = True,
    **lora_kwargs,
) -> dict[str, torch.Tensor]:
    """Save a PEFT LoRA with random A, B under out_dir; return {module: s·B·A in the base weight layout}."""
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets or base.targets, fan_in_fan_out=base.conv1d,
        use_rslora=use_rslora, alpha_pattern=alpha_pattern or {}, rank_pattern=rank_pattern or {},
        task_type="CAUSAL_LM", **lora_kwargs,
    )
    peft_model = get_peft_model(copy.deepcopy(base.model), config)
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
        with torch.no_grad():
            A.copy_(torch.randn(A.shape, generator=generator) / math.sqrt(A.shape[1]))
            B.copy_(torch.randn(B.shape, generator=generator) / math.sqrt(A.shape[0]))
        short = name.split(".")[-1]
        rank = (rank_pattern or {}).get(short, r)
        a = (alpha_pattern or {}).get(short, alpha)
        s = a / math.sqrt(rank) if use_rslora else a / rank  # LoRA eq. (3), rsLoRA
        delta = s * B.detach() @ A.detach()  # (out, in)
        deltas[name.removeprefix("base_model.model.")] = delta.T if base.conv1d else delta
    peft_model.save_pretrained(out_dir)
    if write_meta:
        meta = {"base_fingerprint": base.fingerprint, "base_model": "tiny", "method": "lora"}
        (Path(out_dir) / "oloraplus_adapter.json").write_text(json.dumps(meta))
    return deltas


def hand_merged(base: Base, deltas: list[dict[str, torch.Tensor]], weights: list[float]) -> torch.nn.Module:
    """The base with Σ w_i ΔW_i added to its weights by hand."""
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        for w, delta in zip(weights, deltas):
            for name, d in delta.items():
                model.get_submodule(name).weight += w * d
    return model


def logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits
