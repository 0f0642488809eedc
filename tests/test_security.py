"""Untrusted files: no pickle is opened, no model code runs without --trust-remote-code, no name escapes its directory.

Every hostile file here would leave a marker file if it ever ran; each test checks the marker is absent,
and the trust-remote-code test also shows the marker does appear when code is allowed to run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from oloraplus import models
from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.experiments.sweep import run_sweep
from oloraplus import rundir


class Exploit:
    """Unpickling this runs a shell command: a stand-in for any malicious `.bin`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_exploit(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(Exploit(marker), f)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return code, err


def test_model_with_only_pickle_weights_is_refused_unopened(tiny_llama_dir, alpaca_file, tmp_path, capsys):
    model, marker = tmp_path / "model", tmp_path / "PWNED"
    shutil.copytree(tiny_llama_dir, model)
    (model / "model.safetensors").unlink()
    write_exploit(model / "pytorch_model.bin", marker)
    code, err = run_cli(["train", "--model", str(model), "--data", str(alpaca_file), "--max-length", "128",
                         "--output", str(tmp_path / "out")], capsys)  # within the tiny model's 256 positions
    assert code == 2 and f"--model {model}" in err and "model.safetensors" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_compose_refuses_a_pickle_adapter_unopened(tmp_path, capsys):
    adapter, marker = tmp_path / "adapter", tmp_path / "PWNED"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    write_exploit(adapter / "adapter_model.bin", marker)
    code, err = run_cli(["compose", str(adapter), str(adapter), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "adapter_model.bin: pickle weights are not loaded" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_eval_refuses_a_pickle_adapter_unopened(tiny_llama_dir, alpaca_file, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    assert main(["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--method", "lora", "--rank", "4",
                 "--max-steps", "1", "--train-size", "8", "--eval-size", "4", "--max-length", "64",
                 "--output", str(out)]) == 0
    (out / "adapter" / "adapter_model.safetensors").unlink()
    write_exploit(out / "adapter" / "adapter_model.bin", marker)
    metrics = (out / "metrics.json").read_bytes()
    try:
        code, err = run_cli(["eval", str(out)], capsys)
    finally:
        assert not marker.exists()  # torch.load(weights_only=True) refuses the exploit even today
    assert code == 2 and "adapter_model.bin" in err and (out / "metrics.json").read_bytes() == metrics


def custom_code_model(tiny_llama_dir: Path, tmp_path: Path, marker: Path) -> Path:
    """A model directory whose config asks for its own Python code (an unknown model_type plus auto_map)."""
    model = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, model)
    (model / "custom_llama.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="custom-llama", auto_map={"AutoConfig": "custom_llama.CustomConfig",
                                                       "AutoModelForCausalLM": "custom_llama.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_model_code_runs_only_with_trust_remote_code(tiny_llama_dir, alpaca_file, tmp_path, capsys):
    marker = tmp_path / "CODE_RAN"
    model = custom_code_model(tiny_llama_dir, tmp_path, marker)
    assert TrainConfig().trust_remote_code is False
    code, err = run_cli(["train", "--model", str(model), "--data", str(alpaca_file), "--output",
                         str(tmp_path / "out")], capsys)
    assert code == 2 and f"--model {model}" in err and "custom code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()

    models.load_model(str(model), trust_remote_code=True)  # what --trust-remote-code does
    assert marker.exists()  # so the check above would have seen the code run


def test_config_yaml_cannot_construct_python_objects(tmp_path, capsys):
    marker = tmp_path / "YAML_RAN"
    config = tmp_path / "evil.yaml"
    config.write_text(f"rank: !!python/object/apply:os.system ['touch {marker}']\n")
    code, err = run_cli(["train", "--config", str(config), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and str(config) in err and "invalid YAML" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


HOSTILE = ["../../../escaped", "..", ".", "a/../../b", "~/x", "runs/../../up", "x\0y", "..\\..\\win", "sweep.json",
           "results.csv"]


def test_sweep_values_never_write_outside_the_runs_directory(tmp_path):
    """Every value that names a run is hostile; the stub trainer writes wherever each run's config points.
    The absolute one points into this test's own directory, which must end up holding only the sweep."""
    hostile = [*HOSTILE, str(tmp_path / "escaped-absolute")]
    spec = {"base": {"max_steps": 1}, "grid": {"data": hostile, "target_modules": [["../../../q_proj"], ["q_proj"]]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    output = tmp_path / "sweep"
    written: list[Path] = []

    def stub_train(cfg: TrainConfig) -> None:
        run = rundir.plan_run_dir(cfg.output, overwrite=cfg.overwrite, resume=cfg.resume)
        rundir.start(run, resume=False)
        (run.work / "config.yaml").write_text(yaml.safe_dump({"config": vars(cfg)}))
        (run.work / "metrics.json").write_text(json.dumps({"eval_loss": 1.0}))
        rundir.finish(run)
        written.append(run.final)

    run_sweep(path, output, train_fn=stub_train)
    runs_dir = (output / "runs").resolve()
    assert len(written) == 2 * len(hostile)
    assert all(p.resolve().parent == runs_dir for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "sweep.yaml"]  # nothing beside the sweep


def test_sweep_file_cannot_choose_where_runs_go(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": {"output": str(tmp_path / "elsewhere")}}))
    code, err = run_cli(["sweep", str(path), "--output", str(tmp_path / "sweep")], capsys)
    assert code == 2 and "key 'output' is set by the sweep" in err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "sweep").exists()


def test_a_trained_run_holds_no_pickled_weights(tiny_llama_dir, alpaca_file, tmp_path):
    """What oloraplus hands to others (the run, its adapter) reads back without unpickling anything."""
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--rank", "4",
                 "--max-steps", "2", "--save-steps", "1", "--train-size", "8", "--eval-size", "4",
                 "--max-length", "64", "--output", str(out)]) == 0
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert load_file(out / "adapter" / "adapter_model.safetensors")
