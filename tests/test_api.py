"""The public API (`oloraplus.api`, re-exported lazily from `oloraplus`): attach, λ optimizer, save, load; and its bad
input, which raises the CLI's one-line messages (docs/reliability.md, "Python API")."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import oloraplus
from oloraplus.config import TrainConfig
from oloraplus.errors import AdapterError, ConfigError
from oloraplus.train.mixin import OLoRAPlusTrainingArguments
from tests.conftest import tiny_llama
from tests.helpers import assert_reproduces_on_untouched_base, group_names

REPO = Path(__file__).resolve().parents[1]


def test_import_oloraplus_loads_no_torch_transformers_or_peft():
    code = "import sys, oloraplus; print([m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert out == "[]"  # nothing heavy until a public name is used (test below)


def test_public_names_resolve_and_unknown_ones_do_not():
    assert set(oloraplus.__all__) <= set(dir(oloraplus))
    assert oloraplus.save_adapter is importlib.import_module("oloraplus.api").save_adapter
    assert oloraplus.OLoRAPlusTrainer.__module__ == "oloraplus.train.mixin"
    with pytest.raises(AttributeError, match="no attribute 'add_adaptor'"):
        oloraplus.add_adaptor  # noqa: B018


def _train_a_few_steps(model: torch.nn.Module, lr: float = 1e-2, ratio: float = 4.0, steps: int = 3) -> None:
    """A user's own loop: the λ optimizer and plain next-token loss on fixed ids."""
    optimizer = oloraplus.build_ratio_optimizer(model, lr=lr, ratio=ratio)
    ids = torch.arange(5, 37).reshape(2, 16)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("method, saved_rank", [("olora", 8), ("pissa", 8), ("lora", 4), ("dora", 4)])
def test_saved_adapter_reproduces_the_trained_model_on_the_untouched_base(tmp_path, method, saved_rank, one_thread):
    """OLoRA/PiSSA shift the base: the saved adapter is the base-relative rank-2r LoRA, so plain PEFT loading onto a
    fresh base gives the trained logits; the methods that keep the base save as PEFT does (rank r)."""
    torch.manual_seed(0)
    model = oloraplus.add_adapter(tiny_llama(seed=3), method, rank=4, alpha=8)
    _train_a_few_steps(model)
    path = oloraplus.save_adapter(model, tmp_path / "adapter")
    assert_reproduces_on_untouched_base(model, PeftModel.from_pretrained(tiny_llama(seed=3), path), saved_rank)
    loaded = oloraplus.load_adapter(tiny_llama(seed=3), path)  # the checked way: same model
    assert_reproduces_on_untouched_base(model, loaded, saved_rank)
    meta = json.loads((path / "oloraplus_adapter.json").read_text())
    assert meta == {"base_fingerprint": oloraplus.adapter_record(model).base_fingerprint, "method": method,
                    "rank": 4, "alpha": 8}


def test_loading_leaves_the_base_weights_untouched(tmp_path, one_thread):
    """Why the conversion: PEFT's own save of an OLoRA model re-runs the init when loaded, rewriting the base's W to
    W − s·B0·A0 (so a second adapter on that base is silently wrong); the saved base-relative adapter does not."""
    torch.manual_seed(0)
    model = oloraplus.add_adapter(tiny_llama(seed=3), "olora", rank=4, alpha=8)
    _train_a_few_steps(model)
    model.save_pretrained(tmp_path / "raw")
    oloraplus.save_adapter(model, tmp_path / "ours")
    untouched = tiny_llama(seed=3).state_dict()

    def base_weights(path: Path) -> dict[str, torch.Tensor]:
        loaded = PeftModel.from_pretrained(tiny_llama(seed=3), path)
        return {n.replace("base_model.model.", "").replace(".base_layer", ""): t
                for n, t in loaded.state_dict().items() if "lora_" not in n}

    def shifted(weights: dict[str, torch.Tensor]) -> list[str]:
        return [n for n, t in untouched.items() if not torch.equal(weights[n], t)]

    assert shifted(base_weights(tmp_path / "raw"))  # the reference: PEFT's raw save moves W when loaded
    assert shifted(base_weights(tmp_path / "ours")) == []


@pytest.mark.parametrize("ratio", [0.5, 4.0])
def test_ratio_param_groups_put_b_at_lambda_eta(ratio):
    model = oloraplus.add_adapter(tiny_llama(), "olora", rank=4, alpha=8)
    groups = {g["name"]: g for g in oloraplus.ratio_param_groups(model, lr=1e-3, ratio=ratio)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["B"]["params"]} == {n for n in names.values() if ".lora_B." in n}
    assert {names[id(p)] for p in groups["A"]["params"]} == {n for n in names.values() if ".lora_A." in n}
    assert (groups["A"]["lr"], groups["B"]["lr"]) == pytest.approx((1e-3, ratio * 1e-3))
    optimizer = oloraplus.build_ratio_optimizer(model, lr=1e-3, ratio=ratio)
    assert group_names(model, optimizer)["B"] == [names[id(p)] for p in groups["B"]["params"]]


def test_same_seed_same_adapter():
    """As `oloraplus train`: the adapter depends on the seed only, not on what was drawn before."""
    adapters = []
    for draws in (0, 5):
        torch.manual_seed(7)
        torch.rand(draws)
        model = oloraplus.add_adapter(tiny_llama(), "lora", rank=4, alpha=8)
        adapters.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert adapters[0].keys() == adapters[1].keys()
    for name in adapters[0]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], rtol=0, atol=0)


# --- bad input: the CLI's one-line messages (docs/reliability.md, "Python API") ---


def _cli_message(**config) -> str:
    """What `oloraplus train` says for the same value (TrainConfig.validate, which the CLI runs)."""
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**config).validate()
    return str(caught.value)


def api_unknown_method():
    oloraplus.add_adapter(tiny_llama(), "lorax")


def api_ratio_zero():
    oloraplus.build_ratio_optimizer(oloraplus.add_adapter(tiny_llama(), "lora", rank=4), lr=1e-3, ratio=0.0)


def api_ratio_negative_groups():
    oloraplus.ratio_param_groups(oloraplus.add_adapter(tiny_llama(), "lora", rank=4), lr=1e-3, ratio=-2.0)


def api_ratio_zero_trainer_args(tmp_path=Path("unused")):
    OLoRAPlusTrainingArguments(output_dir=str(tmp_path), ratio=0.0, use_cpu=True)


def api_model_without_blocks():
    oloraplus.add_adapter(torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)), "olora", rank=2)


def api_targets_match_nothing():
    oloraplus.add_adapter(tiny_llama(), "olora", rank=4, target_modules=["qkv_proj"])


API_CASES = {
    "api-unknown-method": (api_unknown_method, ConfigError, _cli_message(method="lorax")),
    "api-ratio-zero": (api_ratio_zero, ConfigError, _cli_message(ratio=0.0)),
    "api-ratio-negative": (api_ratio_negative_groups, ConfigError, _cli_message(ratio=-2.0)),
    "api-ratio-zero-training-arguments": (api_ratio_zero_trainer_args, ConfigError, _cli_message(ratio=0.0)),
    "api-model-without-blocks": (api_model_without_blocks, AdapterError,
                                 "--target-modules: cannot find the transformer blocks of Sequential; "
                                 "pass --target-modules explicitly"),
    "api-targets-match-nothing": (api_targets_match_nothing, AdapterError,
                                  "--target-modules: 'qkv_proj' matches no linear layer; available: q_proj, k_proj, "
                                  "v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_bad_input_raises_the_cli_message(case):
    call, error, message = API_CASES[case]
    with pytest.raises(error) as caught:
        call()
    assert str(caught.value) == message and "\n" not in message


def test_api_adapter_from_another_base_is_refused(tmp_path):
    """api-adapter-from-other-base: the message `oloraplus eval` gives for a run on another base."""
    model = oloraplus.add_adapter(tiny_llama(seed=0), "olora", rank=4, alpha=8)
    path = oloraplus.save_adapter(model, tmp_path / "adapter")
    other = tiny_llama(seed=1)
    with pytest.raises(AdapterError) as caught:
        oloraplus.load_adapter(other, path)
    recorded = oloraplus.adapter_record(model).base_fingerprint
    assert str(caught.value).startswith(f"{path}: trained on another base model (base fingerprint {recorded} != ")
    assert str(caught.value).endswith("of --model LlamaForCausalLM)")
    assert not any("lora_" in n for n, _ in other.named_modules())  # refused before anything was attached


def test_save_finds_the_adapter_inside_a_ddp_style_wrapper(tmp_path, one_thread):
    """accelerate/DDP wrap the model as `.module`: the record (and so the base-relative conversion) is still found."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = oloraplus.add_adapter(tiny_llama(seed=3), "olora", rank=4, alpha=8)
    _train_a_few_steps(model, steps=1)
    assert oloraplus.adapter_record(Wrapper(model)) is oloraplus.adapter_record(model)
    path = oloraplus.save_adapter(Wrapper(model), tmp_path / "adapter")
    assert_reproduces_on_untouched_base(model, PeftModel.from_pretrained(tiny_llama(seed=3), path), 8)


def test_save_refuses_a_model_without_adapter(tmp_path):
    with pytest.raises(AdapterError, match="LlamaForCausalLM has no adapter"):
        oloraplus.save_adapter(tiny_llama(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_api_cases_are_documented():
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [case for case in [*API_CASES, "api-adapter-from-other-base"] if f"`{case}`" not in doc]
    assert not missing, f"docs/reliability.md lacks {missing}"
