"""What `train`, `merge` and `compose` write: modes that follow the umask, and a base model name other tools resolve."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.export import load_metadata, save_adapter
from oloraplus.adapters.merge import merge_run
from oloraplus.cli.main import main
from oloraplus.compose.cli import compose_command
from oloraplus.config import TrainConfig
from oloraplus.io import atomic_write_text, follow_umask
from oloraplus.models import ORIGIN, base_provenance, portable_name
from oloraplus.train.recipe import train


def tiny_config(model: str, data: Path, output: Path, method: str) -> TrainConfig:
    return TrainConfig(model=model, data=str(data), output=str(output), method=method, rank=4, alpha=8, lr=3e-3,
                       max_steps=2, batch_size=4, max_length=64, train_size=16, eval_size=4)


@pytest.fixture(scope="module", params=[0o022, 0o077], ids=["umask022", "umask077"])
def written(request, tiny_llama_dir, alpaca_file, tmp_path_factory, one_thread_module):
    """A trained run, its merged model and a composed adapter, all made under one umask."""
    root = tmp_path_factory.mktemp(f"umask{request.param:03o}")
    before = os.umask(request.param)
    try:
        train(tiny_config(str(tiny_llama_dir), alpaca_file, root / "run", "olora"))
        merge_run(root / "run", root / "merged")
        compose_command([str(root / "run")], str(root / "composed"), None, dry_run=False)
    finally:
        os.umask(before)
    return request.param, root


@pytest.mark.parametrize("output", ["run", "merged", "composed"])
def test_every_written_file_and_directory_follows_the_umask(written, output):
    umask, root = written
    paths = [root / output, *(root / output).rglob("*")]
    assert len(paths) > 3
    modes = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    wanted = {name: (0o777 if (root / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == wanted  # 0755/0644 under umask 022; 0700/0600 under 077


def test_private_temp_dirs_and_files_take_the_umask_current_at_the_call(tmp_path):
    directory = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, as safetensors' files are 0600
    (directory / "sub").mkdir(mode=0o700)
    (directory / "sub" / "w.safetensors").touch(mode=0o600)
    before = os.umask(0o027)
    try:
        follow_umask(directory)
        atomic_write_text(tmp_path / "f.txt", "text")
    finally:
        os.umask(before)
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (directory, directory / "sub", directory / "sub" / "w.safetensors",
                                                       tmp_path / "f.txt")]
    assert modes == [0o750, 0o750, 0o640, 0o640]


def test_alias_is_recorded_by_its_hub_origin_with_the_local_copy_in_oloraplus_metadata():
    assert portable_name("smollm2-135m") == ORIGIN["smollm2-135m"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_name("owner/name") == "owner/name" and portable_name("models/mine") == "models/mine"
    info = base_provenance("smollm2-135m", "/home/u/.cache/oloraplus/models/SmolLM2-135M-Instruct.Q4_1-ab")
    assert info["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["base_model_local_path"] == "/home/u/.cache/oloraplus/models/SmolLM2-135M-Instruct.Q4_1-ab"
    assert info["base_weights"].startswith("Q4_1-dequantised fp32 copy of HuggingFaceTB/SmolLM2-135M-Instruct")
    assert base_provenance("owner/name", "owner/name")["base_weights"] is None


@pytest.mark.parametrize("method", ["olora", "lora"])  # rank-2r rewrite and PEFT's own save (with model card)
def test_saved_adapter_names_the_alias_origin_not_the_cache_path(method, tiny_llama_dir, tmp_path, one_thread):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    cache = "/home/someone/.cache/oloraplus/models/SmolLM2-135M-Instruct.Q4_1-0123"
    model.name_or_path = model.config._name_or_path = cache  # as a converted GGUF is loaded
    peft_model, initial = attach_adapter(model, AdapterSpec(method, rank=4, alpha=8.0))
    save_adapter(peft_model, tmp_path / "adapter", initial, extra_metadata={"base_model": "smollm2-135m"})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(cache not in p.read_text() for p in (tmp_path / "adapter").glob("*.md"))
    meta = load_metadata(tmp_path / "adapter")
    assert meta["base_model"] == "smollm2-135m" and meta["base_model_local_path"] == cache
    assert "Q4_1-dequantised" in meta["base_weights"]
    assert peft_model.peft_config["default"].base_model_name_or_path == cache  # the live model is left alone


def test_a_trained_run_records_the_model_as_given_and_still_loads_evals_and_merges(
        tiny_llama_dir, alpaca_file, tmp_path, monkeypatch, one_thread, capsys):
    monkeypatch.chdir(tiny_llama_dir.parent)  # `--model tiny-llama0` as a user in that directory types it
    given = tiny_llama_dir.name
    train(tiny_config(given, alpaca_file, tmp_path / "run", "olora"))
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == given
    meta = load_metadata(adapter)
    assert meta["base_model_local_path"] == given and meta["base_weights"] is None
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        loaded = PeftModel.from_pretrained(base, str(adapter))(tokens).logits  # explicit base, not the recorded name
    assert torch.isfinite(loaded).all()
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert main(["merge", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, loaded, atol=1e-4)
