"""`oloraplus plan`: every term against an independent reference.

Parameters and trainable parameters against the real model with the real adapter attached (every method);
saved activations against the bytes autograd actually saves in a training forward (every method, with and
without checkpointing; `torch.autograd.graph.saved_tensors_hooks` sees each saved tensor); nf4 weights against
the tensors bitsandbytes allocates; the CLI reads a config.json alone (no weights in the directory).
Peak RSS of whole SmolLM2 runs: bench/memory_results.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import weakref
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oloraplus import plan
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.cli.main import main
from oloraplus.config import METHODS, TrainConfig
from oloraplus.data.collate import CausalLMCollator, model_inputs
from oloraplus.eval.fast_loss import response_only_loss
from oloraplus.train.recompute import enable_gradient_checkpointing

REPO = Path(__file__).resolve().parents[1]
# GQA (6 query, 2 KV heads), distinct widths so a term counted with the wrong width shows
SHAPE = dict(vocab_size=512, hidden_size=96, intermediate_size=256, num_attention_heads=6, num_key_value_heads=2,
             head_dim=16, tie_word_embeddings=True)
# how far the per-method activation terms may be from autograd's saved bytes (docs/plan.md): the LoRA family,
# OHoRA and DoRA are exact up to a few small shared tensors; HiRA's weight-sized term is an approximation
TOLERANCE = {"hira": 0.04}


def config_dir(tmp_path: Path, layers: int = 2, **overrides) -> Path:
    """A model directory holding only config.json: the plan must never need weights."""
    LlamaConfig(**{**SHAPE, "num_hidden_layers": layers, **overrides}).save_pretrained(tmp_path)
    assert not any(p.suffix in (".safetensors", ".bin") for p in tmp_path.iterdir())
    return tmp_path


def packed_batch(batch: int, length: int) -> dict:
    """`batch` examples of exactly `length` tokens, every position scored: the plan's worst case T = N."""
    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": ids, "labels": ids}
             for ids in (torch.randint(3, 512, (length,), generator=g).tolist() for _ in range(batch))]
    return CausalLMCollator(pad_token_id=0, packing=True, pack_length=length)(items)


def saved_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes of the distinct non-parameter storages autograd still holds for backward after one training forward.

    Only tensors alive at the end count: a graph part freed inside the forward (DoRA's weight norm, computed from
    W + s·B·A and then detached) saved tensors that are gone before backward, and the allocator reuses their
    addresses, so counting every storage ever packed made the total depend on allocation order (CI saw DoRA's
    bytes move by 9 % between runs)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, list[tuple[int, weakref.ref]]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), []).append((storage.nbytes(), weakref.ref(t)))
        return t  # autograd keeps what pack returns: t is alive exactly as long as the graph saves it

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = response_only_loss(model, batch)
    alive = [max(nbytes for nbytes, ref in entries if ref() is not None)
             for entries in seen.values() if any(ref() is not None for _, ref in entries)]
    del loss
    return sum(alive)


@pytest.mark.parametrize("method", METHODS)
def test_parameters_and_trainable_parameters_equal_the_attached_adapter(method, tmp_path):
    cfg = TrainConfig(model=str(config_dir(tmp_path)), method=method, rank=4)
    shapes = plan.read_shapes(cfg)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, num_hidden_layers=2))
    assert shapes.params == sum(p.numel() for p in model.parameters())
    batch = packed_batch(2, 32)
    peft_model, _ = attach_adapter(model, AdapterSpec(method, rank=4), calibration=[model_inputs(batch)])
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert plan.estimate(cfg, shapes).trainable == trainable


def test_target_modules_and_block_shapes_follow_the_config(tmp_path):
    cfg = TrainConfig(model=str(config_dir(tmp_path, layers=3)), target_modules=["q_proj", "down_proj"], rank=4)
    shapes = plan.read_shapes(cfg)
    assert sorted({(layer.role, layer.m, layer.n) for layer in shapes.adapted}) == [("attn_in", 96, 96),
                                                                                    ("down", 96, 256)]
    assert len(shapes.adapted) == 6
    layer_params = 4 * 96 * 96 // 3 * 2 + 3 * 96 * 256  # q, o (96×96), k, v (32×96), gate, up, down
    assert shapes.block_linear_params == 3 * layer_params
    assert shapes.largest_block_params == layer_params + 2 * 96  # and the two RMSNorm weights


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch, length, rank, layers", [(2, 64, 8, 3), (4, 32, 4, 2)])
def test_activation_terms_equal_what_autograd_saves(method, batch, length, rank, layers, tmp_path, one_thread):
    cfg = TrainConfig(model=str(config_dir(tmp_path, layers=layers)), method=method, rank=rank,
                      batch_size=batch, max_length=length)
    estimate = plan.estimate(cfg, plan.read_shapes(cfg))
    torch.manual_seed(0)
    data = packed_batch(batch, length)
    model, _ = attach_adapter(LlamaForCausalLM(LlamaConfig(**SHAPE, num_hidden_layers=layers)),
                              AdapterSpec(method, rank=rank), calibration=[model_inputs(data)])
    model.train()
    # the plan's logits term is the peak around the loss (12 bytes per logit); autograd keeps the fp32
    # log-softmax (4 bytes) at the N = T − rows scored positions (the first token of each row predicts nothing)
    tokens, scored = batch * length, batch * (length - 1)
    logits = tokens * SHAPE["vocab_size"] * plan.LOGITS_BYTES
    kept = scored * SHAPE["vocab_size"] * 4
    expected = estimate.activations - logits + kept
    assert saved_bytes(model, data) == pytest.approx(expected, rel=TOLERANCE.get(method, 0.005))
    enable_gradient_checkpointing(model)
    stored = (layers + 1) * tokens * SHAPE["hidden_size"] * 4  # each layer's input and the final norm's
    assert saved_bytes(model, data) == pytest.approx(stored + kept, rel=0.01)
    assert estimate.activations_checkpointed >= stored + logits  # the plan adds the recomputed layer or logits


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_nf4_weights_equal_the_tensors_bitsandbytes_allocates(tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SHAPE, num_hidden_layers=2)).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    allocated = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        p.quant_state.absmax.numel() * p.quant_state.absmax.element_size()
        for p in model.parameters() if hasattr(p, "quant_state"))
    cfg = TrainConfig(model=str(tmp_path), quantize="nf4", rank=4)
    assert plan.estimate(cfg, plan.read_shapes(cfg)).weights == pytest.approx(allocated, rel=0.01)


def test_fsdp_keeps_a_share_of_the_weights_and_two_gathered_layers(tmp_path):
    cfg = TrainConfig(model=str(config_dir(tmp_path)), rank=4)
    shapes = plan.read_shapes(cfg)
    one = plan.estimate(cfg, shapes, dtype="bf16")
    four = plan.estimate(dataclasses.replace(cfg, fsdp=True), shapes, dtype="bf16", processes=4)
    assert four.weights == int(shapes.params * 2 / 4 + 2 * shapes.largest_block_params * 2)
    nf4 = plan.estimate(dataclasses.replace(cfg, fsdp=True, quantize="nf4"), shapes, dtype="bf16", processes=4)
    quantized = shapes.block_linear_params * plan.QUANT_BYTES["nf4"] + (shapes.params - shapes.block_linear_params) * 2
    assert nf4.weights == int(quantized / 4 + 2 * shapes.largest_block_params * plan.QUANT_BYTES["nf4"])
    assert four.adapters == one.adapters // 4
    assert four.activations == one.activations  # every process runs its own batch
    assert four.load == one.weights and one.load == 0  # each process loads the whole base before sharding
    assert "load: the whole base, before sharding" in "\n".join(plan.summary(four))
    assert not four.fits_load(four.load - 1) and four.fits_load(four.load)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_largest_batch_is_the_last_that_fits(checkpointing, tmp_path):
    cfg = TrainConfig(model=str(config_dir(tmp_path)), rank=4, max_length=256)
    shapes = plan.read_shapes(cfg)
    budget = 0.5 * plan.GiB
    best = plan.largest_batch(cfg, shapes, budget, checkpointing)
    total = lambda b: plan.estimate(dataclasses.replace(cfg, batch_size=b), shapes).total(checkpointing)  # noqa: E731
    assert best >= 1 and total(best) <= budget < total(best + 1)
    assert plan.largest_batch(cfg, shapes, 1024, checkpointing) == 0  # 1 KiB holds nothing


def test_plan_command_reads_only_the_config(tmp_path, capsys):
    model = config_dir(tmp_path / "m")
    assert main(["plan", "--model", str(model), "--method", "dora", "--rank", "4", "--gpu-memory", "1",
                 "--batch-size", "2", "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    cfg = TrainConfig(model=str(model), method="dora", rank=4, batch_size=2, max_length=64)
    estimate = plan.estimate(cfg, plan.read_shapes(cfg), dtype="bf16", cuda=True)
    assert f"trainable: {estimate.trainable:,}" in out
    assert "weights (bf16)" in out and "largest --batch-size at --max-length 64 in 1 GiB" in out
    assert list((tmp_path / "m").iterdir()) == [model / "config.json"]  # nothing written


def test_the_shipped_llama3_configs_plan_with_public_parameter_counts(capsys):
    """configs/models: Llama-3-8B has 8.03B parameters and Llama-3-70B 70.55B (Meta's model cards)."""
    for name, params in (("llama3-8b", 8_030_261_248), ("llama3-70b", 70_553_706_496)):
        cfg = TrainConfig(model=str(REPO / "configs" / "models" / name))
        assert plan.read_shapes(cfg).params == params


def test_train_prints_the_plan_when_it_starts(tiny_llama_dir, alpaca_file, tmp_path, capsys, one_thread):
    assert main(["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--rank", "4",
                 "--max-steps", "1", "--batch-size", "2", "--max-length", "64", "--train-size", "4",
                 "--eval-size", "4", "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("memory plan per process"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"trainable: {metrics['trainable_params']:,}" in out
    assert line.endswith("(details: oloraplus plan)")


def test_plan_takes_every_train_flag(capsys, monkeypatch):
    from tests.cli.test_cli import _help, _options

    monkeypatch.setenv("COLUMNS", "2000")
    train, planned = _options(_help(["train"], capsys)), _options(_help(["plan"], capsys))
    assert {k: v for k, v in planned.items() if k in train} == train
    assert set(planned) - set(train) == {"--gpu-memory", "--processes", "--device"}
