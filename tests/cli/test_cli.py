import dataclasses
import re
import subprocess
import sys

import pytest

from oloraplus import config
from oloraplus.adapters import registry
from oloraplus.cli.main import build_parser, main
from oloraplus.config import TrainConfig, flag, resolve
from oloraplus.experiments.executor_config import ExecutorConfig


COMMANDS = ["train", "plan", "eval", "generate", "export", "merge", "compose", "compose-study", "sweep", "report", "tune-ratio"]
# A valid, non-default value for every TrainConfig field (a new field must be added here).
VALUES = {
    "model": "org/some-model", "data": "data.jsonl", "method": "lora", "ratio": 0.25, "rank": 8, "alpha": 4.0,
    "ohora_init": "paper", "dropout": 0.1, "lr": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.1, "scheduler": "cosine",
    "epochs": 2.0, "max_steps": 7, "batch_size": 2, "grad_accum": 3, "max_length": 64, "train_turns": "last",
    "train_size": 10,
    "eval_size": 5, "val_size": 6, "seed": 7, "split_seed": 9, "target_modules": ["q_proj", "v_proj"], "group_by_length": True,
    "response_only_loss": False, "packing": False, "tokens_per_batch": 256, "quantize": "nf4",
    "gradient_checkpointing": True, "fsdp": True, "compile": True, "diagnostics_steps": -1,
    "logging_steps": 2, "eval_steps": 3, "eval_generate": 4, "max_new_tokens": 16, "generate_batch_size": 8,
    "save_steps": 5, "resume": True, "report_to": "wandb", "trust_remote_code": True, "overwrite": True,
    "output": "runs/x",
}


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> dict[str, tuple[str, str]]:
    """{option string: (its invocation, its help)} from a --help printed without wrapping (a wide COLUMNS)."""
    entries: list[list[str]] = []
    for line in text.split("options:\n", 1)[1].splitlines():
        if line.startswith("  -"):
            entries.append([line.strip()])
        elif entries and line.startswith("   "):
            entries[-1].append(line.strip())
    options = {}
    for first, *rest in entries:
        invocation, _, help_text = first.partition("  ")
        help_text = " ".join([help_text.strip(), *rest]).strip()
        for option in invocation.split(", "):
            options[option.split(" ")[0]] = (invocation, help_text)
    return options


def _default(f: dataclasses.Field) -> object:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _expected_help(f: dataclasses.Field) -> str:
    """The field's help, and its default unless the help states the default itself."""
    text = f.metadata["help"]
    return text if "(default:" in text else f"{text} (default: {_default(f)})"


def test_every_config_field_is_a_train_flag_with_the_dataclass_help_and_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    options = _options(_help(["train"], capsys))
    fields = dataclasses.fields(TrainConfig)
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        invocation, help_text = options[flag]
        assert help_text == _expected_help(f), flag
        if isinstance(_default(f), bool):
            assert options["--no-" + flag[2:]] == (invocation, help_text)
        if "choices" in f.metadata:
            assert invocation == f"{flag} {{{','.join(f.metadata['choices'])}}}"
    assert set(options) - {"-h", "--help", "--config"} == {
        opt for f in fields for opt in (["--" + f.name.replace("_", "-")]
                                        + (["--no-" + f.name.replace("_", "-")] if isinstance(_default(f), bool) else []))}
    # No flag given: every value is the dataclass default.
    assert resolve(TrainConfig, build_parser().parse_args(["train"])) == TrainConfig()


def test_a_parsed_command_line_round_trips_into_the_config(monkeypatch):
    fields = dataclasses.fields(TrainConfig)
    assert list(VALUES) == [f.name for f in fields]
    assert all(VALUES[f.name] != _default(f) for f in fields)  # each flag must change something
    # No tracker is installed here; `report_targets` has its own tests (tests/test_config_report_to.py).
    monkeypatch.setattr(config, "report_targets", lambda text: text.split(","))
    # Every non-default value at once is not one valid run (--fsdp with --compile is refused): this test is about
    # parsing; validation has its own tests (tests/test_config.py).
    monkeypatch.setattr(TrainConfig, "validate", lambda self: self)
    argv = []
    for name, value in VALUES.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    assert resolve(TrainConfig, build_parser().parse_args(["train", *argv])) == TrainConfig(**VALUES)


def test_tune_ratio_takes_every_train_flag_and_rewords_only_output(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    train, tune = _options(_help(["train"], capsys)), _options(_help(["tune-ratio"], capsys))
    assert {k: v for k, v in tune.items() if k in train and k != "--output"} == {
        k: v for k, v in train.items() if k != "--output"}
    assert tune["--output"][1] == "search directory: rung-<k>/, tune.md, tune.json, tune.png (default: runs/tune-ratio)"
    executor = {flag(f.name) for f in dataclasses.fields(ExecutorConfig)}
    assert set(tune) - set(train) == {"--grid", "--min-steps", "--rounds", *executor}


def test_every_registered_subcommand_has_a_working_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    top = _help([], capsys)
    listed = re.findall(r"^    (\S+)", top.split("COMMAND\n", 1)[1], flags=re.MULTILINE)
    assert listed == COMMANDS
    for method in registry.methods():  # the methods' own help lines
        assert f"  {method.name:<6} {method.help}" in top
    for command in listed:
        text = _help([command], capsys)
        assert text.startswith(f"usage: oloraplus {command} ") and "options:\n  -h, --help" in text, command


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
