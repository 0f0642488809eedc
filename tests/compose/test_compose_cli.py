"""`compose_command`: diagnostic, files written, dry run, strict --weights, refusals before any write."""

import copy
import json

import pytest
import torch
from compose_helpers import hand_merged, logits, make_adapter
from peft import PeftModel

from oloraplus.compose.cli import compose_command, parse_weights
from oloraplus.adapters.adapter_dir import read_adapter
from oloraplus.errors import AdapterError, ConfigError


@pytest.fixture
def two_runs(llama, tmp_path):
    deltas = [
        make_adapter(llama, tmp_path / "math" / "adapter", r=2, alpha=4, seed=1),  # a run directory
        make_adapter(llama, tmp_path / "code", r=3, alpha=3, seed=2),  # an adapter directory
    ]
    return [str(tmp_path / "math"), str(tmp_path / "code")], deltas


def test_compose_writes_adapter_record_and_diagnostic(llama, two_runs, tmp_path, capsys):
    inputs, deltas = two_runs
    out = tmp_path / "out"
    assert compose_command(inputs, str(out), "1, -0.5e0", dry_run=False) == 0

    printed = capsys.readouterr().out
    cos = json.loads((out / "interference.json").read_text())["overall_rms_cosine"]
    assert "math" in printed and "code" in printed and f"{cos[0][1]:.3f}" in printed
    assert (out / "interference.png").is_file()
    record = json.loads((out / "compose.json").read_text())
    assert record["weights"] == [1.0, -0.5] and record["rank"] == 5
    assert record["fingerprints"] == [llama.fingerprint] * 2 and record["base_fingerprint"] == llama.fingerprint
    assert [i["name"] for i in record["inputs"]] == ["math", "code"]

    composed = PeftModel.from_pretrained(copy.deepcopy(llama.model), out / "adapter").eval()
    torch.testing.assert_close(logits(composed), logits(hand_merged(llama, deltas, [1.0, -0.5])), atol=1e-5, rtol=0)
    again = read_adapter(out)  # the output is itself a run directory that composes again
    assert again.fingerprint == llama.fingerprint and again.method == "compose"


def test_dry_run_writes_only_the_diagnostic(two_runs, tmp_path, capsys):
    inputs, _ = two_runs
    assert compose_command(inputs, str(tmp_path / "out"), None, dry_run=True) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["interference.json", "interference.png"]
    assert "dry run: no adapter written" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,abc", r"--weights: 'abc' is not a number"),
        ("1,", r"--weights: '' is not a number"),
        ("1,nan", r"--weights: 'nan' is not a number"),
        ("1_0,2", r"--weights: '1_0' is not a number"),
        ("1,2,3", r"--weights: 3 values for 2 adapters"),
    ],
)
def test_weights_are_parsed_strictly(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_weights(text, 2)


def test_weights_parse():
    assert parse_weights(" 2 ,-.5,1e-1", 3) == [2.0, -0.5, 0.1]
    assert parse_weights(None, 3) is None


def test_refuses_existing_output_before_writing(two_runs, tmp_path):
    inputs, _ = two_runs
    (tmp_path / "out" / "adapter").mkdir(parents=True)
    (tmp_path / "out" / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--output .*out: exists, is not empty and holds no composition"):
        compose_command(inputs, str(tmp_path / "out"), None, dry_run=True)
    (tmp_path / "out" / "interference.json").write_text("{}")  # what an earlier compose wrote first
    with pytest.raises(AdapterError, match=r"--output .*out: already holds a composed adapter"):
        compose_command(inputs, str(tmp_path / "out"), None, dry_run=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter", "interference.json"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"--output .*file: exists and is not a directory"):
        compose_command(inputs, str(tmp_path / "file"), None, dry_run=True)


def test_refuses_bad_weights_and_incompatible_inputs_before_writing(llama, two_runs, tmp_path):
    inputs, _ = two_runs
    with pytest.raises(ConfigError, match=r"--weights: 1 values for 2 adapters"):
        compose_command(inputs, str(tmp_path / "out"), "1", dry_run=True)
    make_adapter(llama, tmp_path / "attn_only", r=2, alpha=2, seed=3, targets=["q_proj"])
    with pytest.raises(AdapterError, match=r"different target modules"):
        compose_command([inputs[0], str(tmp_path / "attn_only")], str(tmp_path / "out"), None, dry_run=True)
    with pytest.raises(ConfigError, match=r"at least one run or adapter directory"):
        compose_command([], str(tmp_path / "out"), None, dry_run=True)
    assert not (tmp_path / "out").exists()
