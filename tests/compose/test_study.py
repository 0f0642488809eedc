"""`compose-study` on the tiny llama with three tiny domains: files, sums checked against hand-added deltas, resume.

The study's numbers are checked against independent paths: each run's own end-of-training eval (the
in-memory trained model, not the adapter reloaded onto a shared base), and a base whose weights get
Σ s·B·A added by hand from the saved safetensors.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from oloraplus.cli.main import build_parser
from oloraplus.compose import study, study_fit, study_plan
from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.formats import Example, load_examples
from oloraplus.data.split import split_examples
from oloraplus.data.tokenize import encode_examples
from oloraplus.errors import ConfigError, DataError
from oloraplus.eval.loss import evaluate_loss
from oloraplus.train import recipe

BASE = {"method": "olora", "rank": 4, "alpha": 8, "lr": 3e-3, "max_steps": 3, "batch_size": 4, "max_length": 64,
        "train_size": 12, "eval_size": 6, "logging_steps": 1, "seed": 5}


def _write_domains(folder: Path) -> dict[str, str]:
    """Three formats: Alpaca with `input`, question/answer JSONL, chat messages with a system turn."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    alpaca = [{"instruction": f"Repeat {w}.", "input": "twice" if i % 2 else "", "output": f"{w} {w}"}
              for i, w in enumerate(words * 3)]
    qa = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}"} for a in range(3) for b in range(6)]
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Name {i}"},
                          {"role": "assistant", "content": f"name {i} ok"}]} for i in range(18)]
    (folder / "repeat.json").write_text(json.dumps(alpaca))
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    (folder / "chat.json").write_text(json.dumps(chat))
    return {name: str(folder / file) for name, file in
            [("repeat", "repeat.json"), ("math", "sums.jsonl"), ("chat", "chat.json")]}


def _spec(path: Path, model: Path, domains: dict, base: dict | None = None, **extra) -> Path:
    return _write(path, {"base": {"model": str(model), **BASE, **(base or {})}, "domains": domains, **extra})


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def finished(tiny_llama_dir, tmp_path_factory, one_thread_module):
    """One three-domain study, run once through the CLI, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("study")
    spec = _spec(root / "study.yaml", tiny_llama_dir, _write_domains(root / "data"))
    assert _cli(["compose-study", str(spec), "--output", str(root / "out")]) == 0
    return spec, root / "out"


def test_study_writes_every_file_and_table(finished):
    _, out = finished
    for name in ("study.md", "study.json", "interference.json", "interference.png", "scatter.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for run in ("repeat", "math", "chat", "merged"):
        assert (out / "runs" / run / "adapter" / "adapter_model.safetensors").is_file()
    result = json.loads((out / "study.json").read_text())
    variants = ["base", "repeat", "math", "chat", "repeat+math", "repeat+chat", "math+chat", "repeat+math+chat",
                "merged"]
    assert list(result["perplexity"]) == variants
    assert all(set(result["perplexity"][v]) == {"repeat", "math", "chat"} for v in variants)
    assert [row["sum"] for row in result["sums"]] == variants[4:8]
    report = (out / "study.md").read_text()
    assert all(f"| {v} |" in report for v in variants)
    assert "/tmp" not in report and str(out.parent) not in report  # spec, data and --output were absolute
    assert "Command: `oloraplus compose-study study.yaml --output out`" in report
    # the interference file is the diagnostic of the three domain adapters, and the pairs' x values are its entries
    overall = json.loads((out / "interference.json").read_text())["overall_rms_cosine"]
    assert json.loads((out / "interference.json").read_text())["adapters"] == ["repeat", "math", "chat"]
    assert [row["rms_cosine"] for row in result["sums"][:3]] == [overall[0][1], overall[0][2], overall[1][2]]
    assert result["sums"][3]["rms_cosine"] is None
    assert result["fit"]["points"] == 3 and result["fit"]["slope"] is not None


def test_each_run_scores_its_own_eval_set_as_the_study_does(finished):
    """The recipe's split equals the study's: each run's end-of-training eval is on the study's held-out set(s)."""
    _, out = finished
    result = json.loads((out / "study.json").read_text())
    for domain in ("repeat", "math", "chat"):
        own = result["runs"][domain]["metrics"]
        assert own["eval_tokens"] == result["perplexity"][domain][domain]["eval_tokens"]
        assert own["eval_loss"] == pytest.approx(result["perplexity"][domain][domain]["eval_loss"], rel=1e-5)
    merged = result["runs"]["merged"]["metrics"]  # its eval set is the union of the three held-out sets
    assert merged["train_examples"] == 36 and merged["eval_examples"] == 18
    pooled = study_fit.pooled(result["perplexity"]["merged"], ["repeat", "math", "chat"])
    assert merged["perplexity"] == pytest.approx(pooled, rel=1e-5)


def _hand_summed(model_dir: Path, adapters: list[Path]) -> torch.nn.Module:
    """The base with s·B·A of every adapter added to its weights, read straight from the safetensors."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for adapter in adapters:
            config = json.loads((adapter / "adapter_config.json").read_text())
            assert not config.get("rank_pattern") and not config.get("alpha_pattern") and not config["use_rslora"]
            s = config["lora_alpha"] / config["r"]  # LoRA eq. (3)
            tensors = load_file(str(adapter / "adapter_model.safetensors"))
            for key, A in tensors.items():
                if ".lora_A." in key:
                    module = key.removeprefix("base_model.model.").rsplit(".lora_A.", 1)[0]
                    B = tensors[key.replace(".lora_A.", ".lora_B.")]
                    model.get_submodule(module).weight += s * B @ A  # (out, in)
    return model


def _check_sum_against_hand_added_deltas(spec: Path, out: Path, model_dir: Path, subset: tuple[str, ...]) -> None:
    result = json.loads((out / "study.json").read_text())
    model = _hand_summed(model_dir, [out / "runs" / name / "adapter" for name in subset])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collator = CausalLMCollator(pad_token_id=tokenizer.pad_token_id)
    for domain, source in yaml.safe_load(spec.read_text())["domains"].items():
        _, held = split_examples(load_examples(source), BASE["train_size"], BASE["eval_size"], BASE["seed"])
        expected = evaluate_loss(model, encode_examples(held, tokenizer, BASE["max_length"])[0], collator)
        got = result["perplexity"]["+".join(subset)][domain]
        assert got["eval_tokens"] == expected["eval_tokens"]
        assert got["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5), (domain, got, expected)
    assert result["perplexity"]["+".join(subset)] != result["perplexity"]["base"]


@pytest.mark.parametrize("subset", [("repeat", "chat"), ("repeat", "math", "chat")])
def test_sum_perplexities_equal_hand_added_deltas(finished, tiny_llama_dir, subset):
    """OLoRA adapters are saved base-relative (rank 2r); their sum must still be Σ ΔW_i on the untouched base."""
    _check_sum_against_hand_added_deltas(*finished, tiny_llama_dir, subset)


def test_resume_skips_finished_runs_and_refuses_a_changed_config(finished, tmp_path, monkeypatch):
    spec, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = json.loads((copy / "study.json").read_text())["perplexity"]
    shutil.rmtree(copy / "runs" / "math")  # a lost run is trained again, and only that one
    trained: list[str] = []
    real_train = recipe.train
    monkeypatch.setattr(recipe, "train", lambda cfg: trained.append(Path(cfg.output).name) or real_train(cfg))
    study.run_study(spec, copy)
    assert trained == ["math"]
    after = json.loads((copy / "study.json").read_text())["perplexity"]
    assert after["base"] == before["base"]
    for domain, scores in before["math"].items():  # retrained with the same seed: the same adapter
        assert after["math"][domain]["perplexity"] == pytest.approx(scores["perplexity"], rel=1e-4)

    changed = yaml.safe_load(spec.read_text())
    changed["base"]["lr"] = 1e-3
    with pytest.raises(ConfigError, match=r"different config \(lr: 0.003 != 0.001"):
        study.run_study(_write(tmp_path / "changed.yaml", changed), copy)
    assert trained == ["math"]


def test_two_lora_domains_give_one_sum_and_no_r2(tiny_llama_dir, tmp_path, monkeypatch, one_thread):
    domains = _write_domains(tmp_path / "data")
    spec = _spec(tmp_path / "two.yaml", tiny_llama_dir, {"repeat": domains["repeat"], "chat": domains["chat"]},
                 base={"method": "lora"}, baseline="per_sum")  # with two domains: the one merged run
    trained: list[str] = []
    real_train = recipe.train
    monkeypatch.setattr(recipe, "train", lambda cfg: trained.append(Path(cfg.output).name) or real_train(cfg))
    result = study.run_study(spec, tmp_path / "out")
    assert trained == ["repeat", "chat", "merged"]
    assert list(result["perplexity"]) == ["base", "repeat", "chat", "repeat+chat", "merged"]
    assert [row["sum"] for row in result["sums"]] == ["repeat+chat"] and result["sums"][0]["baseline"] == "merged"
    assert result["fit"] == {"points": 1, "slope": None, "intercept": None, "r2": None}
    report = (tmp_path / "out" / "study.md").read_text()
    assert "no line (fewer than two distinct cosines); R² undefined (1 points" in report
    assert (tmp_path / "out" / "scatter.png").stat().st_size > 0
    _check_sum_against_hand_added_deltas(spec, tmp_path / "out", tiny_llama_dir, ("repeat", "chat"))


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("edit, error, match", [
    (lambda s: s.update(grid={"lr": [1]}), ConfigError, "unknown top-level key 'grid'"),
    (lambda s: s["domains"].pop("math"), ConfigError, "at least two"),
    (lambda s: s["domains"].update(math={"data": "x.json", "size": 3}), ConfigError, "math: unknown key 'size'"),
    (lambda s: s["domains"].update(math="missing.jsonl"), DataError, "math: data file not found: missing.jsonl"),
    (lambda s: s["base"].update(method="dora"), ConfigError, "method 'dora' does not save a plain LoRA"),
    (lambda s: s["base"].update(data="x.json"), ConfigError, "key 'data' is set by the study"),
    (lambda s: s["base"].update(rnak=4), ConfigError, "unknown key 'rnak' \\(did you mean 'rank'\\?\\)"),
    (lambda s: s.update(merged={"rank": 8}), ConfigError, "merged: key 'rank' cannot differ"),
    (lambda s: s["domains"].update({"merged": "x.json"}), ConfigError, "domains: merged: a domain name"),
    (lambda s: s.update(baseline="pairs"), ConfigError, "baseline: expected one of all, per_sum"),
])
def test_bad_spec_is_one_line_error_before_training(tmp_path, monkeypatch, edit, error, match):
    domains = _write_domains(tmp_path / "data")
    spec = {"base": {"model": "unused", **BASE}, "domains": {"repeat": domains["repeat"], "math": domains["math"]}}
    edit(spec)
    monkeypatch.setattr(recipe, "train", lambda cfg: pytest.fail("trained despite a bad spec"))
    with pytest.raises(error, match=match) as info:
        study.run_study(_write(tmp_path / "bad.yaml", spec), tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@settings(max_examples=50, deadline=None)
@given(n_train=st.integers(1, 30), n_held=st.integers(1, 30), seed=st.integers(0, 2**31))
def test_arranged_list_splits_back_into_train_and_held(n_train, n_held, seed):
    train, held = [f"t{i}" for i in range(n_train)], [f"h{i}" for i in range(n_held)]
    assert split_examples(study_plan.arrange_for_split(train, held, seed), n_train, n_held, seed) == (train, held)


def test_merged_file_keeps_alpaca_input_and_multi_turn_chats(tmp_path, tiny_gpt2_dir):
    single = [Example((("user", "Repeat it.\n\ntwice"), ("assistant", "it it")), input="twice"),
              Example((("user", "What is 1+1?"), ("assistant", "2")))]
    chat = [Example((("system", "Be brief."), ("user", "hi"), ("assistant", "hello")))]
    for examples in (single, chat):
        path = tmp_path / f"{len(examples)}.jsonl"
        path.write_text(study_plan.merged_jsonl(examples))
        assert load_examples(str(path)) == examples
    # mixed, the Alpaca input is folded into the user turn: fine with a chat template, refused without one
    path = tmp_path / "mixed.jsonl"
    mixed = study_plan.arrange_for_split(single + chat, [chat[0]], 1)
    path.write_text(study_plan.merged_jsonl(mixed))
    no_template = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    with pytest.raises(DataError, match="renders differently"):
        study_plan.check_merged_file(path, single + chat, [chat[0]], 1, no_template)


def test_fit_line_matches_squared_correlation():
    rng = random.Random(0)
    x = [rng.random() for _ in range(6)]
    y = [3 * v + rng.gauss(0, 0.3) for v in x]
    fit = study_fit.fit_line(x, y)
    assert fit["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)  # R² of a simple linear fit
    assert study_fit.fit_line([0.1, 0.3], [1.0, 2.0])["r2"] is None  # two points: the line is exact, R² says nothing
    assert study_fit.fit_line([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == pytest.approx(
        {"points": 3, "slope": 10.0, "intercept": 0.0, "r2": 1.0}, abs=1e-9)
    assert study_fit.fit_line([0.2], [1.0])["slope"] is None


def test_pooled_perplexity_is_token_weighted():
    scores = {"a": {"eval_loss": 1.0, "eval_tokens": 30}, "b": {"eval_loss": 2.0, "eval_tokens": 10}}
    assert study_fit.pooled(scores, ["a", "b"]) == pytest.approx(math.exp((30 * 1.0 + 10 * 2.0) / 40))
