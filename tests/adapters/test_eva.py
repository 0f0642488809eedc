"""--method eva, added through the registry alone (adapters/methods/eva.py): trained end to end, its init checked
against PEFT's own `initialize_lora_eva_weights` on the same batches, and shown to read the training split only."""

import copy
import json

import pytest
import torch
from peft import EvaConfig, LoraConfig, PeftModel, get_peft_model, initialize_lora_eva_weights
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from oloraplus.adapters import registry
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.methods import eva
from oloraplus.cli.main import main
from oloraplus.adapters.targets import resolve_target_modules
from oloraplus.compose.cli import compose_command
from oloraplus.config import TrainConfig
from oloraplus.data.prepare import prepare
from oloraplus.errors import AdapterError
from oloraplus.optim.ratio import build_optimizer
from oloraplus.train import recipe
from oloraplus.train.recipe import train
from tests.helpers import group_names

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def _data(path, offset: int = 0):
    """40 distinct Alpaca records (no record is both in train and eval); `offset` gives other texts."""
    records = [{"instruction": f"Repeat the word {WORDS[(i + offset) % 8]} {i + offset} times.", "input": "",
                "output": " ".join([WORDS[(i + offset) % 8]] * (i % 4 + 1)) + f" {i + offset}"}
               for i in range(40)]
    path.write_text(json.dumps(records))
    return path


def _cfg(model_dir, data, out, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(model=str(model_dir), data=str(data), output=str(out), method="eva", rank=4,
                                 alpha=8, lr=3e-3, max_steps=3, batch_size=4, max_length=128, train_size=24,
                                 eval_size=8, ratio=4.0, diagnostics_steps=-1), **kw})


def _a_factors(model) -> dict[str, torch.Tensor]:
    return {n.removeprefix("base_model.model."): p.detach().clone() for n, p in model.named_parameters()
            if ".lora_A." in n}


def test_eva_is_registered_by_its_one_module():
    method = registry.get("eva")
    assert "eva" in registry.names() and registry.names()[:6] == registry.BUILTIN
    assert (method.shifts_base, method.composable, method.a_markers, method.b_markers) == (
        False, True, ("lora_A",), ("lora_B",))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_eva_trains_reloads_on_the_untouched_base_and_groups_a_and_b(arch, tiny_llama_dir, tiny_gpt2_dir,
                                                                     tmp_path):
    model_dir = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    result = train(_cfg(model_dir, _data(tmp_path / "d.json"), tmp_path / "run"))
    ids = torch.randint(0, 300, (2, 13), generator=torch.Generator().manual_seed(0))
    result.model.eval()
    with torch.no_grad():
        trained = result.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        plain = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")(input_ids=ids).logits
    assert (trained - plain).abs().max() > 1e-4  # training changed the model
    assert torch.allclose(reloaded, trained, atol=1e-5), (reloaded - trained).abs().max()
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert (saved["init_lora_weights"], saved["r"], saved["rank_pattern"]) == ("eva", 4, {})  # ρ = 1: r everywhere

    groups = group_names(result.model, build_optimizer(result.model, lr=3e-3, ratio=4.0))
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert len(groups["A"]) == len(groups["B"]) == len(trainable) // 2 > 0 and not groups["other"]
    assert all(".lora_A." in n for n in groups["A"]) and all(".lora_B." in n for n in groups["B"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = [(r["lr_A"], r["lr_B"]) for r in logged if r.get("lr_A")]
    assert lrs and all(b == pytest.approx(4.0 * a) and a <= 3e-3 for a, b in lrs)  # A at η, B at λη


def _spy_attach(monkeypatch) -> dict:
    """Wrap the recipe's attach_adapter: keep the calibration batches it was given (one pass, materialised so
    that a reference can read exactly the same ones) and the A factors right after the init."""
    seen: dict = {}

    def spy(model, spec, calibration=None):
        batches = list(calibration)
        peft_model, initial = attach_adapter(model, spec, batches)
        seen.update(batches=batches, A=_a_factors(peft_model))
        return peft_model, initial

    monkeypatch.setattr(recipe, "attach_adapter", spy)
    return seen


def test_eva_init_reads_only_the_training_split_and_equals_peft_on_the_same_batches(tiny_llama_dir, tmp_path,
                                                                                    monkeypatch):
    cfg = _cfg(tiny_llama_dir, _data(tmp_path / "d.json"), tmp_path / "run", packing=False)
    seen = _spy_attach(monkeypatch)
    train(cfg)
    prep = prepare(cfg)
    train_rows = {tuple(ids) for ids in prep.train_dataset["input_ids"]}
    eval_rows = {tuple(ids) for ids in prep.eval_dataset["input_ids"]}
    assert not train_rows & eval_rows
    rows = {tuple(ids[mask.bool()].tolist()) for batch in seen["batches"]
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"])}
    assert rows == train_rows  # one pass over the training split, nothing else

    # independent reference: PEFT's own EVA on an untouched copy of the base, fed the same batches
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    reference = get_peft_model(copy.deepcopy(base), LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=resolve_target_modules(base, None),
        init_lora_weights="eva", eva_config=EvaConfig(rho=1.0)))
    initialize_lora_eva_weights(reference, seen["batches"], show_progress_bar=False)
    expected = _a_factors(reference)
    assert expected.keys() == seen["A"].keys() and len(expected) == 14
    for name, A in expected.items():
        torch.testing.assert_close(seen["A"][name], A, atol=1e-5, rtol=1e-4, msg=name)
    random_lora = _a_factors(attach_adapter(copy.deepcopy(base), AdapterSpec("lora", rank=4, alpha=8))[0])
    assert all(not torch.allclose(random_lora[n], A, atol=1e-3) for n, A in expected.items())  # not LoRA's init


def test_eva_init_follows_the_training_data_and_the_seed(tiny_llama_dir, tmp_path, monkeypatch):
    seen = _spy_attach(monkeypatch)
    data = _data(tmp_path / "d.json")
    train(_cfg(tiny_llama_dir, data, tmp_path / "a"))
    first = seen["A"]
    train(_cfg(tiny_llama_dir, data, tmp_path / "b"))  # same seed: identical init and adapter
    assert all(torch.equal(first[n], A) for n, A in seen["A"].items())
    weights = [load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k])
                                                          for k in weights[0])
    train(_cfg(tiny_llama_dir, _data(tmp_path / "other.json", offset=3), tmp_path / "c"))  # other training data
    assert all(not torch.allclose(first[n], A, atol=1e-3) for n, A in seen["A"].items())

    # composable: the summed adapter is both adapters active at once (PEFT adds their outputs)
    assert compose_command([str(tmp_path / "a"), str(tmp_path / "c")], str(tmp_path / "sum"), "1,1", False) == 0
    ids = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        both = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a" / "adapter", adapter_name="a")
        both.load_adapter(tmp_path / "c" / "adapter", adapter_name="c")
        both.base_model.set_adapter(["a", "c"])
        summed = PeftModel.from_pretrained(base, tmp_path / "sum" / "adapter")
        torch.testing.assert_close(summed(input_ids=ids).logits, both(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_eva_without_training_batches_is_one_line(make_model):
    with pytest.raises(AdapterError, match=r"^--method eva: needs training batches"):
        attach_adapter(make_model("llama"), AdapterSpec("eva", rank=4))
    with pytest.raises(AdapterError, match=r"^--method eva: needs training batches"):
        attach_adapter(make_model("llama"), AdapterSpec("eva", rank=4), calibration=[])


def test_an_eva_init_that_does_not_converge_stops_the_cli_with_one_line(tiny_llama_dir, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(eva, "MAX_BATCHES", 2)  # the tiny model needs ~10 forward passes
    argv = ["train", "--model", str(tiny_llama_dir), "--data", str(_data(tmp_path / "d.json")), "--method", "eva",
            "--rank", "4", "--max-steps", "1", "--train-size", "24", "--eval-size", "8", "--max-length", "128",
            "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--method eva: the layer-input SVDs did not converge within 2 training batches "
                            "(too few response tokens per batch for --rank?)")
    assert not (tmp_path / "run").exists()
