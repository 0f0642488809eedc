import subprocess
import sys

import pytest

from oloraplus.cli.main import main


def test_help_explains_every_train_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ["--model", "--data", "--method", "--ratio", "--rank", "--alpha", "--lr", "--epochs", "--max-steps",
                 "--batch-size", "--grad-accum", "--max-length", "--train-size", "--eval-size", "--seed",
                 "--target-modules", "--output", "--config"]:
        assert flag in out


def test_top_level_help_mentions_lambda(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "λ" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--ratio", "0"], "--ratio"),
        (["--ratio", "nan"], "--ratio"),
        (["--rank", "-1"], "--rank"),
        (["--model", "/nonexistent/model"], "--model /nonexistent/model"),
        (["--data", "/nonexistent/data.json"], "data file not found"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_leave_nothing(argv, fragment, tmp_path, capsys, tiny_llama_dir):
    argv = ["train", "--model", str(tiny_llama_dir), *argv, "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_module_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "oloraplus", "train", "--ratio", "-2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("oloraplus: error: --ratio")
