"""`--gradient-checkpointing`: the same loss and adapter gradients as without it, for every method.

Reference: the same model, adapter and packed batch run without checkpointing. Packing and the
response-only loss are on (the defaults), adapter dropout is 0.1 so the recompute must replay the RNG,
and a forward-hook count on each layer's attention proves the layers really ran twice (forward + recompute).
Tolerance: float32 on a tiny Llama, same kernels in the same order, so atol 1e-6 / rtol 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch

from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.cli.main import main
from oloraplus.config import METHODS
from oloraplus.data.collate import CausalLMCollator, model_inputs
from oloraplus.errors import ModelError
from oloraplus.eval.fast_loss import response_only_loss
from oloraplus.rundir import METRICS_FILE
from oloraplus.train.recompute import enable_gradient_checkpointing
from tests.conftest import tiny_llama

ATOL, RTOL = 1e-6, 1e-5


def _batch() -> dict:
    """Three examples of different lengths packed into rows of 48 tokens; prompts unscored (-100)."""
    g = torch.Generator().manual_seed(0)
    items = []
    for prompt, response in ((7, 12), (11, 20), (5, 9)):
        ids = torch.randint(3, 128, (prompt + response,), generator=g).tolist()
        items.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return CausalLMCollator(pad_token_id=0, packing=True, pack_length=48)(items)


def _loss_and_grads(method: str, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    batch = _batch()
    torch.manual_seed(0)
    model, _ = attach_adapter(tiny_llama(), AdapterSpec(method, rank=4, alpha=8, dropout=0.1),
                              calibration=[model_inputs(batch)])
    if checkpointing:
        enable_gradient_checkpointing(model)
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    for layer in model.get_base_model().model.layers:  # inside the checkpoint (the layer's own hooks are not)
        layer.self_attn.register_forward_hook(count)  # (the MLP's recompute stops early, inside down_proj)
    model.train()
    torch.manual_seed(1)  # the dropout masks
    loss = response_only_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, calls


@pytest.mark.parametrize("method", METHODS)
def test_checkpointing_gives_the_same_loss_and_adapter_gradients(method, one_thread):
    loss, grads, calls = _loss_and_grads(method, checkpointing=False)
    loss_ckpt, grads_ckpt, calls_ckpt = _loss_and_grads(method, checkpointing=True)
    assert (calls, calls_ckpt) == (2, 4)  # two layers; with checkpointing each forward runs again in backward
    torch.testing.assert_close(loss_ckpt, loss, atol=ATOL, rtol=RTOL)
    assert grads and grads.keys() == grads_ckpt.keys()
    assert any(g.abs().max() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=ATOL, rtol=RTOL, msg=name)


def test_a_model_without_checkpointing_support_is_refused():
    with pytest.raises(ModelError, match="--gradient-checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_train_with_checkpointing_matches_a_run_without(tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    """Through the CLI: the same eval loss after 3 steps (packing, response-only loss on)."""
    def run(name: str, *extra: str) -> float:
        out = tmp_path / name
        assert main(["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--method", "olora",
                     "--rank", "4", "--max-steps", "3", "--batch-size", "4", "--max-length", "64",
                     "--train-size", "12", "--eval-size", "8", "--logging-steps", "1", *extra,
                     "--output", str(out)]) == 0
        return json.loads((out / METRICS_FILE).read_text())["eval_loss"]

    assert run("ckpt", "--gradient-checkpointing") == pytest.approx(run("plain"), abs=1e-5)
