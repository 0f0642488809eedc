"""`oloraplus plan` with impossible values: exit 2, one line naming the flag or file, nothing written.

The pattern of tests/test_bad_input.py; the cases are documented in docs/reliability.md ("`plan`").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from oloraplus.cli.main import main
from tests.test_plan import REPO, config_dir


def not_causal(tmp: Path) -> Path:
    (tmp / "clip").mkdir()
    (tmp / "clip" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    return tmp / "clip"


def unknown_type(tmp: Path) -> Path:
    (tmp / "odd").mkdir()
    (tmp / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    return tmp / "odd"


# (case id, model dir builder, extra flags, fragments of the one-line message)
CASES: list[tuple[str, Callable[[Path], Path], list[str], list[str]]] = [
    ("plan-model-missing", lambda t: t / "nope", [], ["--model", "nope", "not found"]),
    ("plan-config-unknown-model-type", unknown_type, [], ["--model", "odd", "cannot read its config"]),
    ("plan-not-a-causal-lm", not_causal, [], ["--model", "clip", "not a causal language model"]),
    ("plan-gpu-memory-zero", lambda t: config_dir(t), ["--gpu-memory", "0"], ["--gpu-memory", "got 0.0"]),
    ("plan-processes-zero", lambda t: config_dir(t), ["--processes", "0"], ["--processes", "got 0"]),
    ("plan-fsdp-one-process", lambda t: config_dir(t), ["--fsdp", "--processes", "1"],
     ["--fsdp", "--processes 2 or more"]),
    ("plan-rank-larger-than-layer", lambda t: config_dir(t), ["--rank", "64"],
     ["--rank 64", "min(out, in)=32", "k_proj"]),
    ("plan-target-modules-match-nothing", lambda t: config_dir(t), ["--target-modules", "qkv_proj"],
     ["--target-modules", "'qkv_proj'", "matches no linear layer"]),
]


@pytest.mark.parametrize("case_id, build, extra, fragments", CASES, ids=[c[0] for c in CASES])
def test_plan_bad_input_is_one_line_exit_2_and_writes_nothing(case_id, build, extra, fragments, tmp_path, capsys):
    model = build(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    try:
        code = main(["plan", "--model", str(model), *extra])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("oloraplus: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert sorted(tmp_path.rglob("*")) == before


def test_plan_cases_are_documented():
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [case_id for case_id, *_ in CASES if f"`{case_id}`" not in doc]
    assert not missing, f"docs/reliability.md lacks {missing}"
