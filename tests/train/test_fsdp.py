"""`--fsdp` under torchrun: 2 CPU processes on gloo, the base sharded per decoder layer (FSDP2).

Checked against one process at the same global batch (2 × 2 vs 1 × 4): the adapter the run starts
from (gathered after sharding) is bitwise the single-process init, the λ groups hold the sharded
DTensors with B at λη, and the eval loss and the trained adapter agree (tolerances below); an
interrupted run resumes from its sharded checkpoint to the uninterrupted run's adapter and metrics.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from oloraplus.config import TrainConfig
from tests.helpers import SESSION_KEYS
from tests.train import fsdp_probe

REPO = Path(__file__).resolve().parents[2]
LR, RATIO, MAX_STEPS, SAVE_STEPS = 3e-3, 4.0, 8, 2
EVAL_LOSS_TOL = 1e-4  # measured: 6e-7 (same math, other reduction order: a reduce-scatter of two shards)
ADAPTER_TOL = 1e-5  # measured: 2e-7 after 6 steps


def config(model_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    # 13 eval rows: rank 0 scores 7, rank 1 scores 6, so the last eval batch is uneven across the ranks
    return TrainConfig(**{**dict(
        model=str(model_dir), data=str(data), method="olora", rank=4, alpha=8, lr=LR, ratio=RATIO,
        max_steps=MAX_STEPS, save_steps=SAVE_STEPS, max_length=64, train_size=48, eval_size=13,
        group_by_length=False, seed=5, batch_size=2, logging_steps=2, output=str(out)), **overrides})


def env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "OLORAPLUS_PROGRESS": "0", "PYTHONPATH": path}


def torchrun(*args: str) -> list[str]:
    """Two processes; --standalone picks a free rendezvous port (tests run side by side on one machine)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: torchrun starts each worker in a session of its own, out of reach of killpg."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    children = [int(x) for x in out.split()]
    return [d for c in children for d in (c, *descendants(c))]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and both workers at once, as a machine crash would."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def cli_flags(cfg: TrainConfig, *extra: str) -> list[str]:
    return ["train", "--model", cfg.model, "--data", cfg.data, "--method", cfg.method, "--rank", str(cfg.rank),
            "--alpha", str(cfg.alpha), "--lr", str(cfg.lr), "--ratio", str(cfg.ratio), "--max-steps",
            str(cfg.max_steps), "--save-steps", str(cfg.save_steps), "--max-length", str(cfg.max_length),
            "--train-size", str(cfg.train_size), "--eval-size", str(cfg.eval_size), "--no-group-by-length",
            "--seed", str(cfg.seed), "--batch-size", str(cfg.batch_size), "--logging-steps",
            str(cfg.logging_steps), "--fsdp", *extra, "--output", cfg.output]


OTHER_INITS = ("pissa", "ohora", "eva")  # the other inits that read W (EVA: activations of calibration batches)
SHORT = dict(max_steps=1, save_steps=0, eval_size=4, train_size=8)  # one step: only their init is compared


@pytest.fixture(scope="module")
def sharded(tiny_llama_dir, alpaca_file, tmp_path_factory) -> tuple[Path, Path, TrainConfig]:
    """The probed 2-process --fsdp run: (run directory, probe directory, config). The same torchrun then runs
    one step of each of OTHER_INITS (probe directories 1, 2, 3): one launch instead of four."""
    root = tmp_path_factory.mktemp("fsdp")
    cfg = config(tiny_llama_dir, alpaca_file, root / "run", fsdp=True)
    others = [config(tiny_llama_dir, alpaca_file, root / f"run-{m}", method=m, fsdp=True, **SHORT)
              for m in OTHER_INITS]
    (root / "cfgs.json").write_text(json.dumps([asdict(c) for c in (cfg, *others)]))
    proc = subprocess.run(torchrun("-m", "tests.train.fsdp_probe", str(root / "cfgs.json"), str(root / "probe")),
                          env=env(), cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", root / "probe" / "0", cfg


@pytest.fixture(scope="module")
def single(tiny_llama_dir, alpaca_file, tmp_path_factory, one_thread_module) -> tuple[Path, Path, dict]:
    """One process, the same global batch: (run directory, probe directory, metrics)."""
    root = tmp_path_factory.mktemp("single")
    cfg = config(tiny_llama_dir, alpaca_file, root / "run", batch_size=4)
    return root / "run", root / "probe", fsdp_probe.run(cfg, root / "probe")


def test_decoder_layers_are_the_units_fsdp_wraps(tiny_llama_dir, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    from oloraplus.train import fsdp

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert fsdp.decoder_layer_classes(llama) == ["LlamaDecoderLayer"]
    assert fsdp.decoder_layer_classes(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)) == ["GPT2Block"]
    config = fsdp.training_arguments(llama)["fsdp_config"]
    assert config["version"] == 2 and config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.fixture(scope="module")
def other_inits(sharded, tiny_llama_dir, alpaca_file, tmp_path_factory, one_thread_module) -> dict:
    """method -> (sharded probe directory, single-process probe directory) for one step of each of OTHER_INITS."""
    root = tmp_path_factory.mktemp("inits")
    for m in OTHER_INITS:  # EVA calibrates on --batch-size rows per process (not gathered): keep it the same
        fsdp_probe.run(config(tiny_llama_dir, alpaca_file, root / f"run-{m}", method=m, **SHORT), root / m)
    return {m: (sharded[1].parent / str(i + 1), root / m) for i, m in enumerate(OTHER_INITS)}


@pytest.mark.parametrize("method", OTHER_INITS)
def test_every_weight_dependent_init_is_the_single_process_one(other_inits, method):
    got, want = (load_file(d / "initial.safetensors") for d in other_inits[method])
    assert got.keys() == want.keys() and got
    for key in want:
        assert torch.equal(got[key], want[key]), (method, key, (got[key] - want[key]).abs().max())


def test_sharded_run_starts_from_the_single_process_init(sharded, single):
    got = load_file(sharded[1] / "initial.safetensors")
    want = load_file(single[1] / "initial.safetensors")
    assert got.keys() == want.keys() and any("lora_B" in k for k in got)
    for key in want:  # computed from the full weights before sharding: bitwise equal
        assert torch.equal(got[key], want[key]), (key, (got[key] - want[key]).abs().max())


def test_lambda_groups_hold_the_sharded_parameters(sharded, single):
    groups = json.loads((sharded[1] / "groups.json").read_text())
    plain = json.loads((single[1] / "groups.json").read_text())
    assert groups["A"]["lr"] == LR and groups["B"]["lr"] == pytest.approx(RATIO * LR)  # η_B = λ η_A after wrapping
    assert {k: sorted(p["name"] for p in g["params"]) for k, g in groups.items()} == \
        {k: sorted(p["name"] for p in g["params"]) for k, g in plain.items()}  # the same names in each group
    for name, group in groups.items():
        marker = {"A": "lora_A", "B": "lora_B"}.get(name)
        for p in group["params"]:
            assert marker is None or marker in p["name"]
            assert p["dtensor"] and p["placements"] == ["Shard(dim=0)"], p  # the optimizer steps on shards
            assert p["local_shape"][0] == math.ceil(p["shape"][0] / 2) and p["local_shape"][1:] == p["shape"][1:]


def test_two_sharded_processes_match_one_process(sharded, single):
    run, _, _ = sharded
    got = json.loads((run / "metrics.json").read_text())
    want = single[2]
    assert got["steps"] == want["steps"] == MAX_STEPS
    assert got["train_tokens"] == want["train_tokens"] and got["eval_tokens"] == want["eval_tokens"]
    assert abs(got["eval_loss"] - want["eval_loss"]) < EVAL_LOSS_TOL, (got["eval_loss"], want["eval_loss"])
    a = load_file(run / "adapter" / "adapter_model.safetensors")
    b = load_file(single[0] / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # the same PEFT adapter, gathered on rank 0
        assert torch.allclose(a[key], b[key], atol=ADAPTER_TOL), (key, (a[key] - b[key]).abs().max())
    configs = [json.loads((r / "adapter" / "adapter_config.json").read_text()) for r in (run, single[0])]
    for c in configs:  # a set, written in hash order
        c["target_modules"] = sorted(c["target_modules"])
    assert configs[0] == configs[1]


def test_killed_sharded_run_resumes_to_the_uninterrupted_one(sharded, tmp_path):
    reference, _, cfg = sharded
    out = tmp_path / "run"
    flags = cli_flags(TrainConfig(**{**asdict(cfg), "output": str(out)}))
    first = tmp_path / "run.partial" / "checkpoints" / f"checkpoint-{SAVE_STEPS}"
    proc = subprocess.Popen(torchrun("-m", "oloraplus", *flags), env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not first.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"{first.name} never appeared (torchrun exit code {proc.returncode})")
        time.sleep(0.005)
    kill_tree(proc)
    assert not (tmp_path / "run.partial" / "metrics.json").exists()  # killed mid-training
    # the checkpoint holds the adapter and optimizer shards (DCP), never the frozen base
    assert sorted(p.name for p in (first / "pytorch_model_fsdp_0").iterdir() if p.suffix == ".distcp") == \
        ["__0_0.distcp", "__1_0.distcp"]
    saved = dcp.FileSystemReader(first / "pytorch_model_fsdp_0").read_metadata().state_dict_metadata
    assert len(saved) == 28 and all("lora_A" in k or "lora_B" in k for k in saved), list(saved)  # 2 × 7 layers

    resumed = subprocess.run(torchrun("-m", "oloraplus", *flags, "--resume"), env=env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((reference / "metrics.json").read_text())
    assert got["resumed_from_step"] >= SAVE_STEPS
    strip = lambda m: {k: v for k, v in m.items() if k not in SESSION_KEYS}  # noqa: E731
    assert strip(got) == strip(want)
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(reference / "adapter" / "adapter_model.safetensors")
    for key in b:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())
    assert (out / "log.jsonl").read_text() == (reference / "log.jsonl").read_text()


# --- bad input: one line, exit code 2, nothing written (docs/reliability.md, "Sharded runs") ---

def refused(argv: list[str], out: Path, capsys) -> str:
    from oloraplus.cli.main import main

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("oloraplus: error: ") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists() and not Path(f"{out}.partial").exists()
    return err


def tiny_flags(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--rank", "4", "--alpha", "8",
            "--max-steps", "2", "--batch-size", "2", "--max-length", "64", "--train-size", "8", "--eval-size", "4",
            "--fsdp", *extra, "--output", str(out)]


def test_fsdp_without_torchrun_is_refused(tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    err = refused(tiny_flags(tiny_llama_dir, alpaca_file, tmp_path / "out"), tmp_path / "out", capsys)
    assert "--fsdp: shards the base over processes started by torchrun" in err, err


def test_fsdp_with_one_process_is_refused(tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    err = refused(tiny_flags(tiny_llama_dir, alpaca_file, tmp_path / "out"), tmp_path / "out", capsys)
    assert "--fsdp: needs 2 or more processes to shard over, torchrun started 1" in err, err


def test_fsdp_with_quantize_is_refused(tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "out"
    err = refused(tiny_flags(tiny_llama_dir, alpaca_file, out, "--quantize", "nf4"), out, capsys)
    assert "--fsdp with --quantize nf4: not supported" in err, err


def test_model_without_decoder_layer_class_is_refused(tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    """Checked after the model loads (the class lives on it), before the run directory is created."""
    from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(LlamaPreTrainedModel, "_no_split_modules", None)
    out = tmp_path / "out"
    err = refused(tiny_flags(tiny_llama_dir, alpaca_file, out), out, capsys)
    assert "declares no decoder layer class" in err and "FSDP cannot shard it layer by layer" in err, err


def test_non_finite_step_stops_every_rank_at_the_same_step(tiny_llama_dir, alpaca_file, tmp_path):
    """Each rank sees only its shards and its batch; the NaN watch ANDs its verdict over the ranks, so both stop
    at the same step (no rank left waiting in a collective) and the last good checkpoint is named."""
    out = tmp_path / "run"
    flags = tiny_flags(tiny_llama_dir, alpaca_file, out, "--lr", "1e6", "--save-steps", "1", "--max-steps", "4")
    proc = subprocess.run(torchrun("-m", "oloraplus", *flags), env=env(), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    # the ranks agree on the step, so rank 0 alone says it: one line, not one per rank
    steps = set(re.findall(r"oloraplus: error: training stopped at step (\d+):", proc.stderr))
    assert proc.stderr.count("oloraplus: error:") == 1 and len(steps) == 1, proc.stderr[-3000:]
    failure = json.loads((tmp_path / "run.partial" / "failure.json").read_text())
    assert steps == {str(failure["step"])} and failure["step"] >= 2
    assert failure["last_checkpoint"].endswith(f"checkpoint-{failure['step'] - 1}")
