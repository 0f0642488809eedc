"""Bad-input matrix through the real CLI: exit 2, one line naming the problem, no traceback, nothing written.

Every case runs `oloraplus.cli.main.main([...])` in-process (one also as `python -m oloraplus`).
"Nothing written" means: for a new --output neither it nor `<output>.partial` exists afterwards;
for an existing run directory (eval, a run in the way) every file is byte-for-byte unchanged.
The table of cases is in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from oloraplus.cli.main import build_parser, main
from oloraplus.config import TrainConfig, resolve, to_dict
from tests.conftest import build_tokenizer, save_model_dir, tiny_llama

TINY = ["--rank", "4", "--alpha", "8", "--max-steps", "2", "--batch-size", "4", "--max-length", "64",
        "--train-size", "8", "--eval-size", "4", "--logging-steps", "1"]
ADAPTER_WEIGHTS = Path("adapter") / "adapter_model.safetensors"


@dataclass
class Workspace:
    root: Path
    model: Path  # tiny Llama
    other_model: Path  # same architecture, other weights: a different base
    data: Path
    run: Path  # a finished LoRA run on `model`
    other_run: Path  # a finished LoRA run on `other_model`

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return str(path)

    def train(self, out: Path, *extra: str, model: str | Path | None = None, data: str | Path | None = None) -> list:
        return ["train", "--model", str(model or self.model), "--data", str(data or self.data), *TINY, *extra,
                "--output", str(out)]

    def damaged_run(self, tmp: Path, damage: Callable[[Path], None], source: Path | None = None) -> Path:
        """A copy of a finished run whose adapter directory `damage` alters."""
        copy = tmp / "damaged"
        shutil.copytree(source or self.run, copy)
        damage(copy / "adapter")
        return copy


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_llama_dir, alpaca_file) -> Workspace:
    root = tmp_path_factory.mktemp("bad-input")
    tok = build_tokenizer(chat_template=True)
    other = save_model_dir(root / "other-base", tiny_llama(len(tok), seed=1), tok)
    w = Workspace(root, tiny_llama_dir, other, alpaca_file, root / "run", root / "other-run")
    assert main(w.train(w.run, "--method", "lora")) == 0
    assert main(w.train(w.other_run, "--method", "lora", model=other)) == 0
    return w


def record(i: int) -> dict:
    return {"instruction": f"Say the number {i}.", "input": "", "output": f"{i}"}


def lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def truncate(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def tamper_header(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = b"\xff" * 8  # the header length: now larger than the file
    weights.write_bytes(bytes(data))


def tamper_shape(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[key] = torch.zeros(3, tensors[key].shape[1])
    save_file(tensors, weights)


def tamper_values(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, weights)


def pickle_only(adapter: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(weights), adapter / "adapter_model.bin")
    weights.unlink()


def pickle_only_model(ws: Workspace, tmp: Path) -> Path:
    model = tmp / "bin-model"
    shutil.copytree(ws.model, model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def unfinished_run(ws: Workspace, tmp: Path) -> Path:
    """An interrupted run (lr 0.01) in `<output>.partial`; returns `<output>`."""
    out = tmp / "out"
    started = resolve(TrainConfig, build_parser().parse_args(ws.train(out, "--lr", "0.01")))
    partial(out).mkdir()
    (partial(out) / "config.yaml").write_text(yaml.safe_dump({"config": to_dict(started)}))
    return out


def foreign_dir(ws: Workspace, tmp: Path) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("precious")
    return tmp / "mine"


def plain_file(ws: Workspace, tmp: Path) -> Path:
    (tmp / "file").write_text("precious")
    return tmp / "file"


def locked_sweep(ws: Workspace, tmp: Path) -> Path:
    """A sweep directory whose lock names a live driver on this host (this test process)."""
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "sweep.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                          "since": "2026-12-02T07:00:00+0000"}))
    return tmp / "sweep"


def run_copy(ws: Workspace, tmp: Path) -> Path:
    return Path(shutil.copytree(ws.run, tmp / "existing"))


def run_with_other_base_adapter(ws: Workspace, tmp: Path) -> Path:
    def swap(adapter: Path) -> None:
        shutil.rmtree(adapter)
        shutil.copytree(ws.other_run / "adapter", adapter)

    return ws.damaged_run(tmp, swap)


def partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


# (case id, argv builder (workspace, tmp_path, output) -> argv, fragments the one-line message must contain)
Build = Callable[[Workspace, Path, Path], list]
CASES: list[tuple[str, Build, list[str]]] = [
    # --- data ---
    ("malformed-json", lambda w, t, o: w.train(o, data=w.file("bad.json", '[{"instruction": "a", "output": "b"},')),
     ["bad.json", "line 1", "invalid JSON"]),
    ("jsonl-bad-line-in-middle", lambda w, t, o: w.train(o, data=w.file("mid.jsonl", lines(
        record(0), record(1), '{"instruction": "x", "output": ', record(3)))), ["mid.jsonl", "line 3", "invalid JSON"]),
    ("missing-field", lambda w, t, o: w.train(o, data=w.file("missing.json", json.dumps(
        [record(0), record(1), {"instruction": "x"}]))), ["missing.json", "record 2", "'output'"]),
    ("wrongly-typed-field", lambda w, t, o: w.train(o, data=w.file("typed.jsonl", lines(
        record(0), {"instruction": "x", "output": 5}))), ["typed.jsonl", "record 1", "'output'", "got int"]),
    ("empty-dataset", lambda w, t, o: w.train(o, data=w.file("empty.json", "[]")), ["empty.json", "empty"]),
    ("every-example-too-long", lambda w, t, o: w.train(o, "--max-length", "8", data=w.file("long.json", json.dumps(
        [{"instruction": "word " * 40, "output": "x"}] * 4))), ["--max-length 8", "examples was dropped"]),
    ("non-utf8-bytes", lambda w, t, o: w.train(o, data=w.file("latin1.json", b'[{"instruction": "caf\xe9", '
                                                              b'"output": "x"}]')), ["latin1.json", "not UTF-8"]),
    ("data-not-found", lambda w, t, o: w.train(o, data=str(t / "nope.json")), ["nope.json", "not found"]),
    # --- data as users have it (issue 21) ---
    ("preference-data", lambda w, t, o: w.train(o, data=w.file("dpo.json", json.dumps(
        [{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 4))),
     ["dpo.json", "record 0", "this is preference data", "SFT cannot use it"]),
    ("kto-data", lambda w, t, o: w.train(o, data=w.file("kto.jsonl", lines(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": False}))),
     ["kto.jsonl", "record 0", "this is KTO data", "SFT cannot use it"]),
    ("multimodal-content-part", lambda w, t, o: w.train(o, data=w.file("mm.json", json.dumps([{"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
        {"role": "assistant", "content": "A cat."}]}]))),
     ["mm.json", "record 0", "part type 'image_url'", "multimodal"]),
    ("loss-weight-not-0-or-1", lambda w, t, o: w.train(o, data=w.file("lw.json", json.dumps([{"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": 0.5}]}]))),
     ["lw.json", "record 0", "'loss_weight': expected 0 or 1"]),
    ("plain-text-generate", lambda w, t, o: w.train(o, "--eval-generate", "4", data=w.file(
        "corpus.txt", "One document.\n\nAnother one.\n")), ["--eval-generate", "corpus.txt", "is plain text"]),
    ("max-length-above-positions", lambda w, t, o: w.train(o, "--max-length", "100000"),
     ["--max-length 100000", "above the 256 positions", "max_position_embeddings"]),
    ("flag-typo", lambda w, t, o: w.train(o, "--max-setps", "3"), ["--max-setps", "did you mean --max-steps?"]),
    # --- options ---
    ("unknown-method-flag", lambda w, t, o: w.train(o, "--method", "lorax"), ["--method", "lorax"]),
    ("unknown-method-yaml", lambda w, t, o: w.train(o, "--config", w.file("m.yaml", "method: lorax\n")),
     ["--method", "lorax"]),
    ("unknown-ohora-init-flag", lambda w, t, o: w.train(o, "--method", "ohora", "--ohora-init", "literal"),
     ["--ohora-init", "literal"]),
    ("unknown-ohora-init-yaml", lambda w, t, o: w.train(o, "--config", w.file("i.yaml", "ohora_init: literal\n")),
     ["--ohora-init", "'literal'", "ranked, paper"]),
    ("ratio-zero", lambda w, t, o: w.train(o, "--ratio", "0"), ["--ratio", "got 0"]),
    ("ratio-negative", lambda w, t, o: w.train(o, "--ratio=-2"), ["--ratio", "got -2"]),
    ("ratio-nan", lambda w, t, o: w.train(o, "--ratio", "nan"), ["--ratio", "got nan"]),
    ("ratio-inf", lambda w, t, o: w.train(o, "--ratio", "inf"), ["--ratio", "got inf"]),
    ("ratio-minus-inf", lambda w, t, o: w.train(o, "--ratio=-inf"), ["--ratio", "got -inf"]),
    ("lr-nan", lambda w, t, o: w.train(o, "--lr", "nan"), ["--lr", "nan"]),
    ("rank-zero", lambda w, t, o: w.train(o, "--rank", "0"), ["--rank", "got 0"]),
    ("rank-negative", lambda w, t, o: w.train(o, "--rank=-3"), ["--rank", "got -3"]),
    ("rank-larger-than-layer", lambda w, t, o: w.train(o, "--rank", "64"),
     ["--rank 64", "min(out, in)=32", "layers.0"]),
    ("max-steps-zero", lambda w, t, o: w.train(o, "--max-steps", "0"), ["--max-steps", "got 0"]),
    ("val-size-negative", lambda w, t, o: w.train(o, "--val-size=-5"), ["--val-size: must be >= 0, got -5"]),
    ("split-seed-below-minus-one", lambda w, t, o: w.train(o, "--split-seed=-3"),
     ["--split-seed: must be >= 0, or -1 (use --seed), got -3"]),
    ("target-modules-match-nothing", lambda w, t, o: w.train(o, "--target-modules", "qkv_proj"),
     ["--target-modules", "'qkv_proj'", "matches no linear layer"]),
    # --- model ---
    ("model-path-missing", lambda w, t, o: w.train(o, model=t / "no-such-model"), ["--model", "no-such-model"]),
    ("model-dir-not-a-model", lambda w, t, o: w.train(o, model=w.root / "inputs"),
     ["--model", "not a model directory"]),
    ("model-pickle-weights-only", lambda w, t, o: w.train(o, model=pickle_only_model(w, t)),
     ["--model", "bin-model", "model.safetensors"]),
    # --- config file ---
    ("config-unknown-key", lambda w, t, o: w.train(o, "--config", w.file("unknown.yaml", "rnak: 4\n")),
     ["unknown.yaml", "unknown key 'rnak'", "did you mean 'rank'"]),
    ("config-other-trainers-key",
     lambda w, t, o: w.train(o, "--config", w.file("hf.yaml", "learning_rate: 1e-3\n")),
     ["hf.yaml", "unknown key 'learning_rate'", "did you mean 'lr'"]),
    ("config-wrong-type", lambda w, t, o: w.train(o, "--config", w.file("types.yaml", "epochs: many\n")),
     ["types.yaml", "key 'epochs'", "expected float"]),
    ("config-invalid-yaml", lambda w, t, o: w.train(o, "--config", w.file("syntax.yaml", "rank: [4\n")),
     ["syntax.yaml", "invalid YAML"]),
    ("config-not-a-mapping", lambda w, t, o: w.train(o, "--config", w.file("list.yaml", "- rank\n- 4\n")),
     ["list.yaml", "expected a mapping"]),
    # --- output directory ---
    ("output-holds-another-run", lambda w, t, o: w.train(o, "--method", "olora"),
     ["already holds a run", "--overwrite"]),
    ("output-not-a-run", lambda w, t, o: w.train(o), ["--output", "not an oloraplus run"]),
    ("output-is-a-file", lambda w, t, o: w.train(o), ["--output", "not a directory"]),
    ("output-unwritable", lambda w, t, o: w.train(Path("/proc/oloraplus-run")),
     ["--output /proc/oloraplus-run", "not writable"]),
    ("resume-nothing-to-resume", lambda w, t, o: w.train(o, "--resume"), ["--resume", "no unfinished run"]),
    ("resume-finished-run", lambda w, t, o: w.train(o, "--resume"), ["already finished"]),
    ("resume-with-other-options", lambda w, t, o: w.train(o, "--lr", "0.02", "--resume"),
     ["--resume", "--lr is 0.02", "0.01"]),
    ("resume-no-checkpoint", lambda w, t, o: w.train(o, "--lr", "0.01", "--resume"),
     ["--resume", "holds no checkpoint", "--save-steps", "--overwrite"]),
    # --- other commands never write into a training run or into others' files ---
    ("sweep-output-is-a-run",
     lambda w, t, o: ["sweep", w.file("s.yaml", "grid: {ratio: [1, 4]}\n"), "--output", str(o)],
     ["--output", "is an oloraplus training run"]),
    ("tune-ratio-output-is-a-run", lambda w, t, o: ["tune-ratio", "--grid", "1,4", "--output", str(o)],
     ["--output", "is an oloraplus training run"]),
    ("compose-output-is-a-run", lambda w, t, o: ["compose", str(w.run), "--output", str(o)],
     ["--output", "is an oloraplus training run"]),
    ("compose-study-output-is-a-run", lambda w, t, o: ["compose-study", w.file(
        "study.yaml", "base: {method: lora}\ndomains: {a: a.jsonl, b: b.jsonl}\n"), "--output", str(o)],
     ["--output", "is an oloraplus training run"]),
    ("merge-output-is-a-run", lambda w, t, o: ["merge", str(w.run), "--output", str(o)],
     ["--output", "is an oloraplus training run"]),
    ("merge-output-not-empty", lambda w, t, o: ["merge", str(w.run), "--output", str(o)],
     ["--output", "exists and is not empty; choose a new or empty directory"]),
    ("sweep-output-inside-a-run", lambda w, t, o: ["sweep", w.file("s.yaml", "grid: {ratio: [1, 4]}\n"),
                                                   "--output", str(o / "sweep")], ["inside the training run"]),
    # --- where a sweep's runs train (--executor; docs/cluster.md) ---
    ("executor-several-gpus", lambda w, t, o: ["sweep", w.file("s.yaml", "grid: {ratio: [1, 4]}\n"), "--output",
                                               str(o), "--executor", "ray", "--gpus-per-run", "2"],
     ["--gpus-per-run 2", "torchrun", "one GPU"]),
    ("executor-ray-address-without-ray", lambda w, t, o: ["tune-ratio", "--grid", "1,4", "--output", str(o),
                                                          "--ray-address", "auto"],
     ["--ray-address: only with --executor ray"]),
    ("sweep-driver-running", lambda w, t, o: ["sweep", w.file("s.yaml", "grid: {ratio: [1, 4]}\n"), "--output",
                                              str(o)], ["another sweep driver runs on it", f"pid {os.getpid()}"]),
    # --- compose ---
    ("compose-different-bases", lambda w, t, o: ["compose", str(w.run), str(w.other_run), "--output", str(o)],
     ["different base fingerprints"]),
    ("compose-truncated-adapter", lambda w, t, o: ["compose", str(w.damaged_run(t, truncate)), str(w.run),
                                                   "--output", str(o)], ["adapter_model.safetensors", "corrupt"]),
    ("compose-tampered-header", lambda w, t, o: ["compose", str(w.damaged_run(t, tamper_header)), str(w.run),
                                                 "--output", str(o)], ["adapter_model.safetensors", "corrupt"]),
    ("compose-tampered-shape", lambda w, t, o: ["compose", str(w.damaged_run(t, tamper_shape)), str(w.run),
                                                "--output", str(o)], ["adapter_model.safetensors", "rank"]),
    ("compose-tampered-values", lambda w, t, o: ["compose", str(w.damaged_run(t, tamper_values)), str(w.run),
                                                 "--output", str(o)], ["adapter_model.safetensors", "non-finite"]),
    ("compose-pickle-adapter", lambda w, t, o: ["compose", str(w.damaged_run(t, pickle_only)), str(w.run),
                                                "--output", str(o)], ["adapter_model.bin", "pickle"]),
    # --- eval (the run directory must stay as it was) ---
    ("eval-truncated-adapter", lambda w, t, o: ["eval", str(o)], ["adapter_model.safetensors", "corrupt"]),
    ("eval-tampered-header", lambda w, t, o: ["eval", str(o)], ["adapter_model.safetensors", "corrupt"]),
    ("eval-tampered-shape", lambda w, t, o: ["eval", str(o)], ["damaged/adapter", "lora_A rank 3 != lora_B rank 4"]),
    ("eval-tampered-values", lambda w, t, o: ["eval", str(o)], ["damaged/adapter", "non-finite"]),
    ("eval-pickle-adapter", lambda w, t, o: ["eval", str(o)], ["adapter_model.bin", "safetensors"]),
    ("eval-adapter-from-other-base", lambda w, t, o: ["eval", str(o)], ["base", "fingerprint"]),
    ("eval-not-a-run", lambda w, t, o: ["eval", str(w.root / "inputs")], ["not an oloraplus run"]),
    ("eval-missing-run", lambda w, t, o: ["eval", str(t / "runs" / "doesnotexist")],
     ["doesnotexist: run directory does not exist"]),
]

# Where the output must already exist before the command: how to make it.
PRE_EXISTING: dict[str, Callable[[Workspace, Path], Path]] = {
    "output-holds-another-run": run_copy,
    "resume-finished-run": run_copy,
    "resume-with-other-options": unfinished_run,
    "resume-no-checkpoint": unfinished_run,
    "output-not-a-run": foreign_dir,
    **{case: run_copy for case in ("sweep-output-is-a-run", "tune-ratio-output-is-a-run", "compose-output-is-a-run",
                                   "compose-study-output-is-a-run", "merge-output-is-a-run",
                                   "sweep-output-inside-a-run")},
    "merge-output-not-empty": foreign_dir,
    "sweep-driver-running": locked_sweep,
    "output-is-a-file": plain_file,
    "eval-truncated-adapter": lambda w, t: w.damaged_run(t, truncate),
    "eval-tampered-header": lambda w, t: w.damaged_run(t, tamper_header),
    "eval-tampered-shape": lambda w, t: w.damaged_run(t, tamper_shape),
    "eval-tampered-values": lambda w, t: w.damaged_run(t, tamper_values),
    "eval-pickle-adapter": lambda w, t: w.damaged_run(t, pickle_only),
    "eval-adapter-from-other-base": run_with_other_base_adapter,
}

# Cases that fail today because of code outside train/ (see docs/reliability.md, "Open gaps").
# strict: once the fix lands the case passes, the xfail turns into a failure, and its entry is deleted here.
KNOWN_GAPS: dict[str, str] = {}  # every case of the matrix now passes


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def params():
    for case_id, build, fragments in CASES:
        marks = [pytest.mark.xfail(reason=KNOWN_GAPS[case_id], strict=True)] if case_id in KNOWN_GAPS else []
        yield pytest.param(case_id, build, fragments, id=case_id, marks=marks)


@pytest.mark.parametrize("case_id, build, fragments", params())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ws, tmp_path, capsys, case_id, build, fragments):
    out = PRE_EXISTING[case_id](ws, tmp_path) if case_id in PRE_EXISTING else tmp_path / "out"
    argv = build(ws, tmp_path, out)
    before = snapshot(out), snapshot(partial(out))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects some flags itself
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("oloraplus: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert (snapshot(out), snapshot(partial(out))) == before  # new outputs stay absent, existing ones untouched


def test_case_matrix_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [case_id for case_id, _, _ in CASES if f"`{case_id}`" not in doc]
    assert not missing, f"docs/reliability.md lacks {missing}"


def test_module_entry_point_reports_a_bad_jsonl_line(ws, tmp_path):
    """The same contract through `python -m oloraplus` (a real process, real stderr)."""
    data = ws.file("entry.jsonl", lines(record(0), "not json", record(2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OLORAPLUS_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "oloraplus", *ws.train(tmp_path / "out", data=data)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"oloraplus: error: {data}: line 2: invalid JSON: Expecting value (column 1)"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
