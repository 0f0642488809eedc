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


TORCH_PROBE = ("import sys\nfrom oloraplus.cli.main import main\nrc = main(sys.argv[1:])\n"
               "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")


@pytest.mark.parametrize("argv, message", [
    (["train", "--ratio", "0"], "oloraplus: error: --ratio: λ must be a finite number > 0, got 0.0"),
    (["train", "--config", "{tmp}/train.yaml"], "unknown key 'learning_rate' (did you mean 'lr'?)"),
    (["eval", "{tmp}/runs/typo"], "runs/typo: run directory does not exist"),
    (["merge", "{tmp}/runs/typo", "--output", "{tmp}/merged"], "runs/typo: run directory does not exist"),
    (["tune-ratio", "--grid", "1,x"], "--grid: 'x' is not a number"),
    (["compose", "{tmp}/a", "{tmp}/b", "--weights", "x,1", "--output", "{tmp}/c"], "--weights: 'x' is not a number"),
    (["compose", "{tmp}/a", "--output", "{tmp}/train.yaml"], "train.yaml: exists and is not a directory"),
    (["sweep", "{tmp}/train.yaml", "--output", "{tmp}/sweep"], "train.yaml: unknown top-level key 'learning_rate'"),
    (["compose-study", "{tmp}/train.yaml", "--output", "{tmp}/study"], "unknown top-level key 'learning_rate'"),
])
def test_config_errors_come_before_torch_is_imported(argv, message, tmp_path):
    (tmp_path / "train.yaml").write_text("learning_rate: 1e-3\n")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    proc = subprocess.run([sys.executable, "-c", TORCH_PROBE, *argv], capture_output=True, text=True)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_module_entry_point_reports_a_bad_ratio_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "oloraplus", "train", "--ratio", "0"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "oloraplus: error: --ratio: λ must be a finite number > 0, got 0.0\n"


def test_importing_the_cli_and_config_does_not_import_torch():
    code = ("import sys\nimport oloraplus.config\nimport oloraplus.cli.main as m\nm.build_parser()\n"
            "print(sorted(k for k in ('torch', 'transformers', 'peft', 'matplotlib') if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("command", ["eval", "merge"])
def test_a_missing_run_directory_is_named_as_missing(command, tmp_path, capsys):
    missing = tmp_path / "runs" / "doesnotexist"
    argv = [command, str(missing)] + (["--output", str(tmp_path / "merged")] if command == "merge" else [])
    assert main(argv) == 2
    assert capsys.readouterr().err == f"oloraplus: error: {missing}: run directory does not exist\n"
    (tmp_path / "runs" / "doesnotexist.partial").mkdir(parents=True)
    assert main(argv) == 2
    assert "the run has not finished" in capsys.readouterr().err
