"""--quantize bad input through the real CLI: exit 2, one line naming the flag and the fix, before the model loads,
nothing written (the contract of tests/test_bad_input.py; the rows are in docs/reliability.md)."""

from __future__ import annotations

import sys

import pytest

from oloraplus import models
from oloraplus.cli.main import main

TINY = ["--rank", "4", "--alpha", "8", "--max-steps", "1", "--batch-size", "4", "--max-length", "64",
        "--train-size", "8", "--eval-size", "4"]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: these errors must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")
    monkeypatch.setattr(models, "load_model", refuse)


@pytest.fixture
def without_bitsandbytes(monkeypatch):
    """`import bitsandbytes` fails, as on an install without the [quantize] extra."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses an unknown choice itself
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("oloraplus: error: "), err
    return err


def train_argv(model_dir, data, out, *extra) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), *TINY, *extra, "--output", str(out)]


def assert_nothing_written(out):
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_quantize_without_bitsandbytes_names_the_extra(tiny_llama_dir, alpaca_file, tmp_path, capsys,
                                                       without_bitsandbytes, no_model_load):
    out = tmp_path / "out"
    err = one_line_error(capsys, train_argv(tiny_llama_dir, alpaca_file, out, "--quantize", "nf4"))
    assert err == ("oloraplus: error: --quantize nf4: needs bitsandbytes, which is not installed "
                   "(pip install 'oloraplus[quantize]')")
    assert_nothing_written(out)


def test_quantize_in_yaml_without_bitsandbytes(tiny_llama_dir, alpaca_file, tmp_path, capsys,
                                               without_bitsandbytes, no_model_load):
    config = tmp_path / "q.yaml"
    config.write_text("quantize: int8\n")
    out = tmp_path / "out"
    err = one_line_error(capsys, train_argv(tiny_llama_dir, alpaca_file, out, "--config", str(config)))
    assert "--quantize int8: needs bitsandbytes" in err and "oloraplus[quantize]" in err
    assert_nothing_written(out)


def test_a_method_that_cannot_run_on_the_format_names_it_and_the_alternative(tiny_llama_dir, alpaca_file, tmp_path,
                                                                             capsys, no_model_load):
    pytest.importorskip("bitsandbytes")  # with it missing, the missing extra is reported first
    out = tmp_path / "out"
    err = one_line_error(capsys, train_argv(tiny_llama_dir, alpaca_file, out, "--method", "dora", "--quantize", "int8"))
    assert err.startswith("oloraplus: error: --method dora with --quantize int8: not supported: ")
    assert "use --quantize nf4" in err and "--method lora" in err
    assert_nothing_written(out)


def test_unknown_quantize_value_in_yaml(tiny_llama_dir, alpaca_file, tmp_path, capsys, no_model_load):
    config = tmp_path / "q.yaml"
    config.write_text("quantize: nf8\n")
    out = tmp_path / "out"
    err = one_line_error(capsys, train_argv(tiny_llama_dir, alpaca_file, out, "--config", str(config)))
    assert err == "oloraplus: error: --quantize: unknown 'nf8'; choose from none, nf4, fp4, int8"
    assert_nothing_written(out)


def test_the_quick_start_default_needs_no_bitsandbytes(tiny_llama_dir, alpaca_file, tmp_path, without_bitsandbytes):
    """--quantize none (the default) never touches bitsandbytes: an install without the extra trains as before."""
    assert main(train_argv(tiny_llama_dir, alpaca_file, tmp_path / "run")) == 0
