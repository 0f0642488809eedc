"""OLoRA+ in TRL's SFTTrainer (the [trl] extra): the same training as `oloraplus train`, λ in the optimizer, and a
saved adapter that reproduces the trained model on the untouched base."""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

pytest.importorskip("trl")

import oloraplus  # noqa: E402
from oloraplus.config import TrainConfig  # noqa: E402
from oloraplus.data.prepare import prepare  # noqa: E402
from oloraplus.errors import ConfigError, MissingExtraError  # noqa: E402
from oloraplus.train.recipe import train  # noqa: E402
from oloraplus.train.trl_sft import OLoRAPlusSFTConfig, OLoRAPlusSFTTrainer  # noqa: E402
from tests.helpers import assert_reproduces_on_untouched_base  # noqa: E402
from tests.conftest import build_tokenizer, tiny_llama  # noqa: E402

STEPS, LR, RATIO = 6, 1e-2, 4.0
# conftest's ChatML with TRL's {% generation %} markers around the assistant replies (assistant-only loss)
TRAINING_CHATML = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def sft_config(tmp_path, **overrides) -> OLoRAPlusSFTConfig:
    """The arguments `oloraplus train` gives its Trainer, in TRL's dataclass (recipe._training_arguments)."""
    settings = dict(output_dir=str(tmp_path / "trl"), ratio=RATIO, learning_rate=LR, lr_scheduler_type="linear",
                    warmup_steps=0, weight_decay=0.0, max_steps=STEPS, per_device_train_batch_size=4, seed=42,
                    data_seed=42, logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                    gradient_checkpointing=False, disable_tqdm=True, max_length=64, completion_only_loss=True)
    return OLoRAPlusSFTConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def reference_and_trl(tiny_llama_dir, alpaca_file, tmp_path_factory, one_thread_module):
    """`oloraplus train` and OLoRAPlusSFTTrainer on the same examples, batches, seed, init and optimizer."""
    tmp = tmp_path_factory.mktemp("trl-vs-train")
    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), method="olora", ratio=RATIO, rank=4, alpha=8,
                      lr=LR, max_steps=STEPS, batch_size=4, max_length=64, train_size=24, eval_size=4,
                      logging_steps=1, packing=False, output=str(tmp / "run"))
    reference = train(cfg)

    prep = prepare(replace(cfg, output=str(tmp / "unused")))  # the same split and encoding, a fresh base
    rows = prep.train_dataset
    assert all(l in (i, -100) for ids, labels in zip(rows["input_ids"], rows["labels"]) for i, l in zip(ids, labels))
    dataset = Dataset.from_dict({  # TRL's pre-tokenized prompt-completion form: it builds the labels itself
        "input_ids": rows["input_ids"],
        "completion_mask": [[int(l != -100) for l in labels] for labels in rows["labels"]],
    })
    model = oloraplus.add_adapter(prep.loaded.model, "olora", rank=4, alpha=8)
    trainer = OLoRAPlusSFTTrainer(model=model, args=sft_config(tmp), train_dataset=dataset,
                                  processing_class=prep.loaded.tokenizer)
    result = trainer.train()
    return reference, trainer, result, tmp


def test_trl_trains_as_oloraplus_train(reference_and_trl):
    """Same examples in the same order, same OLoRA init, same λ AdamW, same schedule: the per-step losses agree to
    1e-4 (Trainer logs them to 4 significant digits), the mean loss to 1e-5 and every trained factor to 1e-4 absolute.
    Both normalise the loss by the batch's scored tokens; `oloraplus train` runs the output head only at those
    positions, TRL's fused head too (in tiles), so float32 sums differ only in order; Adam divides each gradient by its
    own running scale, which turns those ~1e-7 differences in tiny gradients into up to ~2e-5 in the factors
    (measured), while the factors themselves move by more than 1e-2."""
    reference, trainer, result, _ = reference_and_trl
    ours = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    theirs = _train_losses(reference)
    assert len(ours) == len(theirs) == STEPS
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert ours[-1] < ours[0] - 0.05  # it trained: the comparison is not between two untouched models
    assert result.training_loss == pytest.approx(reference.metrics["train_loss"], rel=1e-5)
    trained = dict(trainer.model.named_parameters())
    for name, param in reference.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(trained[name], param, rtol=0, atol=1e-4, msg=name)
    initial = oloraplus.adapter_record(trainer.model).initial_factors  # B0, A0: the factors moved ≫ the tolerance
    moved = [(trained[f"{layer}.lora_B.default.weight"] - factors.B).abs().max() for layer, factors in initial.items()]
    assert min(moved) > 1e-2


def _train_losses(reference) -> list[float]:
    import json

    log = (reference.output / "log.jsonl").read_text().splitlines()
    return [row["loss"] for row in map(json.loads, log) if "loss" in row and "eval_loss" not in row]


def test_b_factors_at_lambda_eta(reference_and_trl):
    _, trainer, _, _ = reference_and_trl
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {g: [names[id(p)] for p in groups[g]["params"]] != [] for g in ("A", "B")} == {"A": True, "B": True}
    assert all(".lora_B." in names[id(p)] for p in groups["B"]["params"])
    assert all(".lora_A." in names[id(p)] for p in groups["A"]["params"])
    assert groups["B"]["initial_lr"] == pytest.approx(RATIO * LR) and groups["A"]["initial_lr"] == pytest.approx(LR)


def test_save_model_reproduces_the_trained_logits_on_the_untouched_base(reference_and_trl, tiny_llama_dir):
    _, trainer, _, tmp = reference_and_trl
    out = tmp / "saved"
    trainer.save_model(str(out))
    assert (out / "tokenizer.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert_reproduces_on_untouched_base(trainer.model, PeftModel.from_pretrained(base, out), rank=2 * 4)


def test_packing_and_assistant_only_loss(tmp_path, one_thread):
    """TRL's own data path: conversational records, assistant-only loss, packed (BFD) rows; λ still in the groups."""
    tok = build_tokenizer()
    tok.chat_template = TRAINING_CHATML
    torch.manual_seed(0)
    model = oloraplus.add_adapter(tiny_llama(len(tok)), "olora", rank=4, alpha=8)
    records = [{"messages": [{"role": "user", "content": f"Repeat {w}."}, {"role": "assistant", "content": w}]}
               for w in ["alpha", "beta", "gamma", "delta"] * 4]
    args = sft_config(tmp_path, max_steps=2, packing=True, assistant_only_loss=True, completion_only_loss=None)
    trainer = OLoRAPlusSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                                  processing_class=tok)
    labels = trainer.train_dataset[0]["labels"]
    assert -100 in labels and any(l != -100 for l in labels)  # the user turns carry no loss
    trainer.train()
    assert trainer.padding_free
    assert {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups} == pytest.approx(
        {"A": LR, "B": RATIO * LR})


def test_hyperparameter_search_over_ratio_and_lr(tmp_path, tiny_llama_dir, one_thread):
    """TRL's trainer takes no model_init; ours does, and every trial gets a fresh adapter and its own λ, η."""
    pytest.importorskip("optuna")
    tok = build_tokenizer()
    ids = [tok(f"Repeat {w}. {w}")["input_ids"] for w in ["alpha", "beta", "gamma", "delta"] * 2]
    dataset = Dataset.from_dict({"input_ids": ids})
    seen = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.append((args.ratio, args.learning_rate, {g["name"]: g["initial_lr"] for g in optimizer.param_groups}))

    def model_init(trial=None):
        return oloraplus.add_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), "olora", rank=4, alpha=8)

    trainer = OLoRAPlusSFTTrainer(args=sft_config(tmp_path, max_steps=2), model_init=model_init,
                                  train_dataset=dataset, eval_dataset=dataset, processing_class=tok,
                                  callbacks=[Record()])
    best = trainer.hyperparameter_search(
        hp_space=lambda t: {"ratio": t.suggest_float("ratio", 0.5, 16, log=True),
                            "learning_rate": t.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        n_trials=2, backend="optuna")
    assert len(seen) == 2  # train() builds a fresh model per trial; the one __init__ made is never trained
    trials = seen
    assert trials[0][:2] != trials[1][:2]
    for ratio, lr, groups in trials:
        assert groups == pytest.approx({"A": lr, "B": ratio * lr})
    assert set(best.hyperparameters) == {"ratio", "learning_rate"}


def test_needs_our_config(tmp_path):
    """TRL's own SFTConfig has no λ: refused in one line, not trained at λ = 1 silently."""
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    for args in (None, plain):
        with pytest.raises(ConfigError, match="needs an OLoRAPlusSFTConfig"):
            OLoRAPlusSFTTrainer(model=tiny_llama(), args=args)


def test_without_trl_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # what `import trl` meets where it is not installed
    monkeypatch.delitem(sys.modules, "oloraplus.train.trl_sft")
    with pytest.raises(MissingExtraError, match=r'pip install "oloraplus\[trl\]"') as caught:
        importlib.import_module("oloraplus.train.trl_sft")
    assert isinstance(caught.value, ImportError) and "\n" not in str(caught.value)
