"""A hub model id that cannot be reached fails fast with one line; a cached one loads offline; --max-length is
checked against the model's positions before the weights load. No real host is contacted: HF_ENDPOINT points at
a closed local port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oloraplus.cli.main import main
from oloraplus.data.prepare import check_max_length
from oloraplus.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    return {**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
            "OLORAPLUS_PROGRESS": "0", "PYTHONPATH": str(SRC), **extra}


EXPECTED = ("--model someone/no-such-model: the Hugging Face hub cannot be reached (offline?) and the model is not in "
            "the local cache: download it first (hf download someone/no-such-model) or pass a local model directory")


def test_unreachable_hub_id_is_one_line_without_retries(tmp_path, alpaca_file):
    env = hub_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "oloraplus", "train", "--model", "someone/no-such-model", "--data",
                           str(alpaca_file), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # the last line: importing bitsandbytes (via peft) may print its own note about optional kernels first
    assert proc.stderr.strip().splitlines()[-1] == f"oloraplus: error: {EXPECTED}"
    assert "Retry" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("offline", ["", "1"], ids=["unreachable", "HF_HUB_OFFLINE"])
def test_unreachable_hub_id_fails_within_ten_seconds(tmp_path, offline):
    """Timed inside the process, after the imports (which alone take seconds on a loaded machine)."""
    code = ("import time; from oloraplus.models import resolve_model_path; from oloraplus.errors import ModelError\n"
            "start = time.perf_counter()\n"
            "try:\n    resolve_model_path('someone/no-such-model')\nexcept ModelError as exc:\n    print(exc)\n"
            "print(time.perf_counter() - start)")
    env = hub_env(tmp_path, **({"HF_HUB_OFFLINE": offline} if offline else {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    message, elapsed = proc.stdout.strip().splitlines()
    assert message == EXPECTED
    assert float(elapsed) < 10  # huggingface_hub's own retries took 35-51 s before the probe


def test_cached_hub_model_resolves_to_its_snapshot_offline(tmp_path, tiny_llama_dir):
    snapshot = tmp_path / "hf" / "hub" / "models--someone--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in tiny_llama_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = "from oloraplus.models import resolve_model_path; print(resolve_model_path('someone/tiny'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=hub_env(tmp_path),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == snapshot


def test_max_length_above_positions_fails_before_the_weights_load(tiny_llama_dir, alpaca_file, tmp_path, capsys,
                                                                  monkeypatch):
    from oloraplus import models

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights must not load")

    monkeypatch.setattr(models, "load_model", no_weights)
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--max-length", "100000",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    positions = json.loads((tiny_llama_dir / "config.json").read_text())["max_position_embeddings"]
    assert err == (f"oloraplus: error: --max-length 100000: above the {positions:,} positions of --model "
                   f"{tiny_llama_dir} (max_position_embeddings); use --max-length {positions} or less")
    assert not out.exists()


def test_max_length_check_reads_gpt2_names_and_allows_the_limit():
    from transformers import GPT2Config

    config = GPT2Config(n_positions=128)
    check_max_length(config, 128, "gpt2")
    with pytest.raises(ConfigError, match="--max-length 129: above the 128 positions"):
        check_max_length(config, 129, "gpt2")
