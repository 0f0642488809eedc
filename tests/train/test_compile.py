"""`--compile`: regional torch.compile of the decoder layers gives the eager loss and gradients, compiles one
graph for every layer and every packed length, and falls back to eager when it cannot compile.

Compiling with inductor costs tens of seconds on this CPU even for a tiny layer, so one test (the first) uses
the real backend; the others use dynamo's `aot_eager` backend (the same tracing, guards and recompiles, the
same aten graphs, no code generation). Every test starts from a clean dynamo cache.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import Trainer

from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.cli.main import main
from oloraplus.data.collate import CausalLMCollator, model_inputs
from oloraplus.eval.fast_loss import response_only_loss
from oloraplus.train import compile as regional
from oloraplus.train.compile import compile_layers, decoder_layers
from tests.conftest import tiny_llama
from tests.train.test_resume import assert_same_run, flags

COMPILED = ["lora", "hira", "ohora"]  # each its own layer code
LORA_LAYER = ["olora", "pissa", "eva"]  # PEFT's LoRA layer with another init: lora's compiled program
# float32 on the CPU: inductor fuses and reorders the reductions of norms and softmax, so the last bits differ
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(autouse=True)
def _fresh_dynamo(one_thread):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def batches(seed: int = 0) -> list[dict]:
    """Packed batches of varied shapes (rows x length), with response-only labels (a prompt of 3 tokens)."""
    g = torch.Generator().manual_seed(seed)
    collate = CausalLMCollator(pad_token_id=0, packing=True, pack_length=48)
    out = []
    for lengths in ([20, 30, 15, 25], [9, 40, 33], [12, 11, 30, 44, 7]):
        items = []
        for n in lengths:
            ids = torch.randint(1, 128, (n,), generator=g).tolist()
            items.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
        out.append(collate(items))
    return out


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = response_only_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def adapted(method: str, layers: int = 2) -> torch.nn.Module:
    calibration = [model_inputs(b) for b in batches(seed=1)]
    model, _ = attach_adapter(tiny_llama(num_hidden_layers=layers), AdapterSpec(method=method, rank=4, alpha=8),
                              calibration)
    return model.train()


def assert_same_as_eager(method: str, backend, layers: int = 1, dynamic: bool = False, shapes: int = 1
                         ) -> regional.RegionalCompile:
    eager = adapted(method, layers)
    compiled_model = copy.deepcopy(eager)
    handle = compile_layers(compiled_model, name=method, backend=backend, dynamic=dynamic)
    assert handle is not None and len(handle.layers) == layers
    for batch in batches()[:shapes]:
        want_loss, want = loss_and_grads(eager, batch)
        got_loss, got = loss_and_grads(compiled_model, batch)
        torch.testing.assert_close(got_loss, want_loss, rtol=RTOL, atol=ATOL)
        assert got.keys() == want.keys() and got
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=ATOL, msg=name)
    return handle


def test_inductor_layers_give_the_eager_loss_and_gradients():
    """The real backend (what --compile runs), two layers sharing one graph; static shapes keep it affordable."""
    handle = assert_same_as_eager("lora", backend="inductor", layers=2)
    assert handle.failure is None and handle.graphs() == 1 and handle.compile_s() > 0


@pytest.mark.parametrize("method", COMPILED)
def test_each_layer_kind_compiles_whole_and_matches_eager(method):
    handle = assert_same_as_eager(method, backend="aot_eager")
    assert handle.failure is None and handle.graphs() == 1, handle.summary()


@pytest.mark.parametrize("method", LORA_LAYER)
def test_other_inits_train_lora_layers(method):
    """OLoRA, PiSSA and EVA differ from LoRA only in the initial values: the compiled program is lora's."""
    kinds = lambda model: sorted({type(m).__name__ for m in decoder_layers(model)[0].modules()})  # noqa: E731
    assert kinds(adapted(method, layers=1)) == kinds(adapted("lora", layers=1))


def test_dora_cannot_compile_whole_and_trains_eagerly_with_one_line(capsys):
    """PEFT's DoRA layer breaks dynamo's graph (an unsupported method call): eager, the same numbers, one line."""
    handle = assert_same_as_eager("dora", backend="aot_eager")
    assert handle.failure is not None and handle.graphs() == 0
    captured = capsys.readouterr()
    said = [line for line in (captured.err + captured.out).splitlines() if "--compile" in line]
    assert len(said) == 1 and "dora cannot be compiled" in said[0], said


def test_compile_inside_non_reentrant_gradient_checkpointing_matches_eager():
    """transformers' checkpointing wraps the layer's forward, so the compiled region contains the checkpoint."""
    eager = adapted("olora", layers=1)
    eager.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compiled_model = copy.deepcopy(eager)
    handle = compile_layers(compiled_model, backend="aot_eager", dynamic=False)
    want_loss, want = loss_and_grads(eager, batches()[0])
    got_loss, got = loss_and_grads(compiled_model, batches()[0])
    torch.testing.assert_close(got_loss, want_loss, rtol=RTOL, atol=ATOL)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=ATOL, msg=name)
    assert handle.failure is None and handle.graphs() == 1


def failing_backend(gm, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def test_a_layer_that_cannot_compile_falls_back_to_eager_with_one_line(capsys):
    eager = adapted("lora", layers=1)
    compiled_model = copy.deepcopy(eager)
    handle = compile_layers(compiled_model, name="lora on tiny", backend=failing_backend, dynamic=False)
    batch = batches()[0]
    want_loss, want = loss_and_grads(eager, batch)
    got_loss, got = loss_and_grads(compiled_model, batch)
    assert torch.equal(got_loss, want_loss) and all(torch.equal(got[n], want[n]) for n in want)
    captured = capsys.readouterr()
    said = [line for line in (captured.err + captured.out).splitlines() if "--compile" in line]
    assert len(said) == 1 and "lora on tiny cannot be compiled" in said[0] and "training eagerly" in said[0]
    assert handle.failure is not None and "off" in handle.summary()


def test_paused_and_restored_layers_run_eagerly():
    model = adapted("lora", layers=1)
    handle = compile_layers(model, backend="aot_eager", dynamic=False)
    with handle.paused(), torch.no_grad():
        model(**model_inputs(batches()[0]))
    assert handle.graphs() == 0  # evaluation never compiles
    handle.restore()
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    model(**model_inputs(batches()[0]))
    assert handle.graphs() == 0 and not handle.hooks


def test_a_model_without_decoder_layers_trains_eagerly_with_one_line(capsys):
    assert compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), name="mlp") is None
    captured = capsys.readouterr()
    assert "mlp has no decoder layer list" in captured.err + captured.out


# --- the recipe: 20 steps of varied packed lengths, periodic eval, checkpoints every 2 steps, resume ---

def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_compiled_run_recompiles_a_handful_of_times_learns_as_eager_and_resumes(
        tiny_llama_dir, alpaca_file, tmp_path, monkeypatch):
    """One dynamic compile serves the whole test: the reference run compiles, the later runs reuse its graphs."""
    monkeypatch.setattr(regional, "BACKEND", "aot_eager")
    reference = tmp_path / "compiled"
    assert main(flags(tiny_llama_dir, alpaca_file, reference, "--compile")) == 0
    got = metrics(reference)
    assert got["compiled"] is True and got["compile_s"] > 0
    assert 1 <= got["compile_graphs"] <= 3, got["compile_graphs"]  # 20 steps of packed batches of varied shapes

    assert main(flags(tiny_llama_dir, alpaca_file, tmp_path / "eager")) == 0
    want = metrics(tmp_path / "eager")
    assert want["compile_s"] == 0 and want["compiled"] is False
    for key in ("train_loss", "eval_loss", "last_logged_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), key
    assert got["train_tokens"] == want["train_tokens"]

    save = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise OSError(28, "No space left on device")
        return save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_6)
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--compile")) == 2
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save)
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--compile", "--resume")) == 0
    assert_same_run(out, reference)
