"""`generate`, `eval` and `export` on an adapter directory they cannot use: exit 2, one line naming the file and
field (or the flag), nothing written. The pattern of tests/test_bad_input.py; the cases are documented in
docs/reliability.md ("Adapter directories in generate, eval and export").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from oloraplus.cli.main import main
from oloraplus.eval import harness
from tests.conftest import REPO, build_tokenizer, save_model_dir, tiny_llama


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama an adapter was saved on, one twice as wide, one with a single block."""
    root = tmp_path_factory.mktemp("bases")
    tokenizer = build_tokenizer()
    dirs = {"base": save_model_dir(root / "base", tiny_llama(len(tokenizer)), tokenizer),
            "wide": save_model_dir(root / "wide", tiny_llama(len(tokenizer), hidden_size=64), tokenizer),
            "shallow": save_model_dir(root / "shallow", tiny_llama(len(tokenizer), num_hidden_layers=1), tokenizer)}
    model = AutoModelForCausalLM.from_pretrained(dirs["base"], dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"])).save_pretrained(
        root / "adapter")  # plain PEFT: adapter_config.json names the base by its directory
    dirs["adapter"] = root / "adapter"
    prompts = root / "prompts.txt"
    prompts.write_text("hello\n")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {w}", "output": w}) + "\n" for w in ("a", "b", "c")))
    dirs["data"] = data
    gsm8k = root / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "1 + 1?", "answer": "2\n#### 2"}) + "\n")
    dirs["gsm8k"] = gsm8k
    dirs["prompts"] = prompts
    return dirs


def adapter_naming(bases: dict[str, Path], tmp: Path, base: str | None) -> Path:
    """A copy of the adapter whose adapter_config.json names `base` (None: names none)."""
    copy = tmp / "named"
    shutil.copytree(bases["adapter"], copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def generate(source: Path, bases: dict[str, Path], *extra: str) -> list[str]:
    return ["generate", str(source), "--prompts", str(bases["prompts"]), "--max-new-tokens", "2", "--device", "cpu",
            *extra]


Build = Callable[[dict[str, Path], Path], list[str]]
# (case id, the command line, fragments of the one-line message)
CASES: list[tuple[str, Build, list[str]]] = [
    ("adapter-base-unset", lambda b, t: generate(adapter_naming(b, t, None), b),
     ["adapter_config.json: base_model_name_or_path is not set", "pass --model"]),
    ("adapter-base-not-found", lambda b, t: generate(adapter_naming(b, t, str(t / "gone")), b),
     ["named: cannot find the base model it names here", "adapter_config.json: base_model_name_or_path", "gone",
      "pass --model"]),
    ("adapter-base-other-shapes", lambda b, t: generate(b["adapter"], b, "--model", str(b["wide"])),
     ["adapter_model.safetensors", "down_proj: lora_B has out_features 32", "has 64 there",
      "trained on another base (this one came from --model)"]),
    ("adapter-base-other-shapes-eval", lambda b, t: ["eval", str(b["adapter"]), "--data", str(b["data"]),
                                                     "--output", str(t / "evals"), "--model", str(b["wide"]),
                                                     "--device", "cpu"],
     ["down_proj: lora_B has out_features 32"]),
    ("adapter-base-other-shapes-export", lambda b, t: ["export", str(b["adapter"]), "--format", "merged",
                                                       "--model", str(b["wide"]), "--output", str(t / "merged")],
     ["down_proj: lora_B has out_features 32"]),
    ("adapter-base-missing-module", lambda b, t: generate(b["adapter"], b, "--model", str(b["shallow"])),
     ["layers.1", "has no such module", "trained on another base (this one came from --model)"]),
    ("adapter-model-not-found", lambda b, t: generate(b["adapter"], b, "--model", str(t / "nope")),
     ["--model", "nope: not found"]),
    ("adapter-path-missing", lambda b, t: generate(b["prompts"].parent / "bases-none", b),
     ["run directory does not exist"]),
    ("neither-run-nor-adapter-dir", lambda b, t: generate(t, b),
     ["not an oloraplus run (no config.yaml) nor an adapter directory (no adapter_config.json)"]),
    ("eval-adapter-without-data", lambda b, t: ["eval", str(b["adapter"])],
     ["not an oloraplus run, so there is no eval split; pass --data FILE"]),
    ("eval-harness-on-adapter", lambda b, t: ["eval", str(b["adapter"]), "--harness", "gsm8k_local",
                                              "--harness-data", str(b["gsm8k"])],
     ["--harness", "not an oloraplus run", "evaluate a bare adapter with --data"]),
]


@pytest.mark.parametrize("case_id, build, fragments", CASES, ids=[c[0] for c in CASES])
def test_adapter_bad_input_is_one_line_exit_2_and_writes_nothing(bases, tmp_path, capsys, monkeypatch, case_id, build,
                                                                fragments):
    monkeypatch.setattr(harness, "require_lm_eval", lambda: None)  # --harness checks lm-eval first; not installed here
    argv = build(bases, tmp_path)
    watched = [tmp_path, bases["adapter"], bases["base"]]
    before = [sorted(p.rglob("*")) for p in watched]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("oloraplus: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert [sorted(p.rglob("*")) for p in watched] == before


def test_adapter_cases_are_documented():
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [case_id for case_id, *_ in CASES if f"`{case_id}`" not in doc]
    assert not missing, f"docs/reliability.md lacks {missing}"


def test_base_is_the_first_named_that_resolves(bases, tmp_path):
    """oloraplus_adapter.json's base_model (the --model it was trained with) before adapter_config.json's portable
    name, each only where it resolves on this machine; --model before both."""
    from oloraplus.adapters.adapter_dir import adapter_source

    adapter = adapter_naming(bases, tmp_path, str(bases["base"]))
    meta = adapter / "oloraplus_adapter.json"
    meta.write_text(json.dumps({"base_model": str(bases["wide"])}))
    assert adapter_source(adapter).base_model == str(bases["wide"])
    meta.write_text(json.dumps({"base_model": str(tmp_path / "gone")}))  # trained on another machine
    source = adapter_source(adapter)
    assert source.base_model == str(bases["base"]) and source.named_by.endswith("base_model_name_or_path")
    assert adapter_source(adapter, model=str(bases["shallow"])).base_model == str(bases["shallow"])
