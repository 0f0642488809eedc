"""Mistyped flags get a "did you mean", as mistyped YAML keys do."""

from __future__ import annotations

import pytest

from oloraplus.cli.main import main, suggest_flag


@pytest.mark.parametrize(("argv", "hint"), [
    (["train", "--max-setps", "3"], "--max-steps"),
    (["train", "--max_steps", "3"], "--max-steps"),  # underscores, as in the YAML key
    (["train", "--learning-rate", "1e-3"], "--lr"),  # what HF TrainingArguments calls it
    (["train", "--max_seq_length=256"], "--max-length"),
    (["eval", "runs/x", "--genrate", "4"], "--generate"),
])
def test_typo_gets_the_flag_it_meant(argv, hint, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert err.startswith(f"oloraplus: error: unrecognized arguments: {argv[-2] if '=' not in argv[-1] else argv[-1]}")
    assert f"(did you mean {hint}?) (see oloraplus {argv[0]} --help)" in err


def test_no_suggestion_for_a_stray_value_or_a_flag_like_nothing(capsys):
    for argv in (["train", "--zzzzzz", "1"], ["train", "stray"]):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert "did you mean" not in err and "unrecognized arguments" in err


def test_suggest_flag_prefers_other_trainers_names():
    assert suggest_flag("--lora_alpha", ["--alpha", "--lr", "--rank"]) == "--alpha"
    assert suggest_flag("--rnak", ["--alpha", "--lr", "--rank"]) == "--rank"
    assert suggest_flag("--xyzzy", ["--alpha", "--lr", "--rank"]) is None
