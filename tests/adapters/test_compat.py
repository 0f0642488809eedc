"""vLLM compatibility verdicts: one test per rule of vLLM's PEFTHelper, plus real saved adapters."""

import json
from pathlib import Path

import pytest
from peft import LoraConfig

from oloraplus.adapters.compat import MAX_LORA_RANKS, max_lora_rank_flag, vllm_summary, vllm_verdicts
from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.errors import AdapterError
from oloraplus.train.recipe import train


def _plain_config() -> dict:
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]).to_dict()
    return json.loads(json.dumps(config, default=sorted))  # target_modules is a set in PEFT


def _adapter(tmp_path: Path, weights: bool = True, **changes) -> Path:
    config = {**_plain_config(), **changes}
    for key in [k for k, v in changes.items() if v is None and k in ("r", "lora_alpha", "target_modules")]:
        del config[key]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    return tmp_path


def _failed(path: Path) -> dict[str, str]:
    return {rule: reason for rule, ok, reason in vllm_verdicts(path) if not ok}


def test_plain_lora_passes_every_rule(tmp_path):
    verdicts = vllm_verdicts(_adapter(tmp_path))
    assert all(ok for _, ok, _ in verdicts), verdicts
    assert {rule for rule, _, _ in verdicts} >= {"peft_type", "required", "rank", "dora", "modules_to_save", "bias",
                                                 "features", "init", "patterns", "scaling", "weights"}


@pytest.mark.parametrize("changes, rule, words", [
    ({"peft_type": "OHORA"}, "peft_type", "only LoRA"),
    ({"peft_type": "HIRA"}, "peft_type", "only LoRA"),
    ({"r": None}, "required", "missing r"),
    ({"target_modules": None, "lora_alpha": None}, "required", "missing lora_alpha, target_modules"),
    ({"use_dora": True}, "dora", "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save", "lm_head"),
    ({"bias": "lora_only"}, "bias", "'lora_only'"),
    ({"lora_bias": True}, "features", "LoRA bias"),
    ({"layer_replication": [[0, 2]]}, "features", "layer_replication"),
    ({"init_lora_weights": "olora"}, "init", "rewrites the base"),
    ({"init_lora_weights": "pissa_niter_4"}, "init", "rewrites the base"),
    ({"rank_pattern": {"q_proj": 4}}, "patterns", "rank_pattern"),
    ({"r": 1024}, "rank", "above vLLM's largest --max-lora-rank 512"),
    ({"r": 0}, "rank", "positive integers"),
])
def test_each_rule_fails_alone(tmp_path, changes, rule, words):
    failed = _failed(_adapter(tmp_path, **changes))
    assert list(failed) == [rule] and words in failed[rule]


def test_missing_weights_fail(tmp_path):
    assert list(_failed(_adapter(tmp_path, weights=False))) == ["weights"]


@pytest.mark.parametrize("rank, flag", [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (300, 320), (512, 512), (513, None)])
def test_max_lora_rank_flag_is_the_smallest_choice_that_fits(rank, flag):
    assert max_lora_rank_flag(rank) == flag
    if flag is not None:  # independent check against the list itself
        assert flag == min(c for c in MAX_LORA_RANKS if c >= rank)


def test_rank_reason_names_the_flag_and_uses_rank_pattern(tmp_path):
    reasons = {rule: reason for rule, _, reason in vllm_verdicts(_adapter(tmp_path, r=32))}
    assert "--max-lora-rank 32" in reasons["rank"]
    reasons = {rule: reason for rule, _, reason in vllm_verdicts(_adapter(tmp_path, r=8, rank_pattern={"q": 40}))}
    assert "rank 40: serve with --max-lora-rank 64" in reasons["rank"]
    reasons = {rule: reason for rule, _, reason in vllm_verdicts(_adapter(tmp_path, r=8, rank_pattern={}))}
    assert "default 16 is enough" in reasons["rank"]


def test_rslora_is_served_with_its_own_scale(tmp_path):
    reasons = {rule: (ok, reason) for rule, ok, reason in vllm_verdicts(_adapter(tmp_path, use_rslora=True))}
    assert reasons["scaling"] == (True, "lora_alpha/sqrt(r) (rsLoRA, read by vLLM)")


@pytest.mark.parametrize("content, match", [("{", "not valid JSON"), ("[1]", "expected a JSON object")])
def test_bad_config_files_are_adapter_errors(tmp_path, content, match):
    (tmp_path / "adapter_config.json").write_text(content)
    with pytest.raises(AdapterError, match=match):
        vllm_verdicts(tmp_path)


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, alpaca_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("olora", "dora"):
        train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(root / method), method=method,
                          rank=4, alpha=8, max_steps=2, batch_size=4, max_length=64, train_size=8, eval_size=4))
    return root


def test_saved_olora_run_passes_with_rank_2r(runs, capsys):
    assert main(["export", str(runs / "olora"), "--check", "vllm"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "rank 8: serve with --max-lora-rank 8" in out  # r = 4 saved base-relative: 2r
    assert len(out.splitlines()) == len(vllm_verdicts(runs / "olora"))


def test_saved_dora_run_fails_the_check(runs, capsys):
    assert main(["export", str(runs / "dora" / "adapter"), "--check", "vllm"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  dora: DoRA" in out and out.count("FAIL") == 1


@pytest.mark.parametrize("argv, match", [
    ([], "exactly one of --format"),
    (["--format", "merged"], "--output is required"),
])
def test_export_usage_errors(tmp_path, capsys, argv, match):
    assert main(["export", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_check_of_a_non_adapter_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--check", "vllm"]) == 2
    assert "adapter_config.json: missing (expected an adapter directory" in capsys.readouterr().err


def test_export_merged_is_the_merge_command(runs, tmp_path, capsys):
    from safetensors.torch import load_file

    assert main(["export", str(runs / "olora"), "--format", "merged", "--output", str(tmp_path / "a")]) == 0
    assert main(["merge", str(runs / "olora"), "--output", str(tmp_path / "b")]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert main(["export", str(runs / "olora"), "--format", "merged", "--output", str(tmp_path / "a")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_train_ends_with_a_one_line_vllm_verdict(tiny_llama_dir, alpaca_file, tmp_path, capsys):
    for method, expected in (("olora", "vLLM: serves this adapter as saved (rank 8: serve with --max-lora-rank 8"),
                             ("dora", "vLLM: would refuse this adapter (dora: DoRA")):
        train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(tmp_path / method),
                          method=method, rank=4, alpha=8, max_steps=1, batch_size=4, max_length=64, train_size=4,
                          eval_size=4))
        captured = capsys.readouterr()
        lines = [line for line in (captured.out + captured.err).splitlines() if line.startswith("vLLM:")]
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert vllm_summary(vllm_verdicts(tmp_path / method)) == lines[0]
