"""Every command that writes a directory refuses a training run, a path inside one, and others' files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oloraplus.cli.main import main
from oloraplus.errors import ConfigError
from oloraplus.rundir import check_output_dir


def make_run(path: Path) -> Path:
    """What `train` leaves: config.yaml, metrics.json and adapter/."""
    (path / "adapter").mkdir(parents=True)
    (path / "config.yaml").write_text("config: {}\n")
    (path / "metrics.json").write_text(json.dumps({"eval_loss": 1.0}))
    return path


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def argv_for(command: str, tmp_path: Path, output: Path) -> list[str]:
    """A command line that would get as far as writing `output` if the output were acceptable."""
    if command == "sweep":
        spec = tmp_path / "s.yaml"
        spec.write_text("base: {max_steps: 1}\ngrid: {ratio: [1, 4]}\n")
        return ["sweep", str(spec), "--output", str(output)]
    if command == "compose-study":
        spec = tmp_path / "study.yaml"
        spec.write_text("base: {method: lora}\ndomains: {a: a.jsonl, b: b.jsonl}\n")
        return ["compose-study", str(spec), "--output", str(output)]
    if command == "compose":
        return ["compose", str(tmp_path / "in1"), str(tmp_path / "in2"), "--output", str(output)]
    if command == "merge":
        return ["merge", str(tmp_path / "source-run"), "--output", str(output)]
    return ["tune-ratio", "--grid", "1,4", "--min-steps", "1", "--output", str(output)]


COMMANDS = ["sweep", "compose-study", "compose", "merge", "tune-ratio"]


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_refuse_to_write_into_a_training_run(command, tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "x")
    before = snapshot(run)
    assert main(argv_for(command, tmp_path, run)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {run}: is an oloraplus training run" in err
    assert snapshot(run) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_refuse_a_directory_inside_a_training_run(command, tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "x")
    before = snapshot(run)
    assert main(argv_for(command, tmp_path, run / "sub")) == 2
    assert f"is inside the training run {run}" in capsys.readouterr().err
    assert snapshot(run) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_refuse_a_non_empty_directory_of_something_else(command, tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(argv_for(command, tmp_path, other)) == 2
    err = capsys.readouterr().err
    assert f"--output {other}: exists" in err and "is not empty" in err and "choose a new or empty directory" in err
    assert snapshot(other) == ["notes.txt"]


def test_each_kind_of_output_is_recognised_as_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    assert check_output_dir(sweep, what="sweep", own=("sweep.json",)) == sweep  # resumes
    with pytest.raises(ConfigError, match="holds no λ search"):
        check_output_dir(sweep, what="λ search", own=("tune.json", "rung-0"))
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", what="merged model") == tmp_path / "empty"
    assert check_output_dir(tmp_path / "new" / "dir", what="merged model") == tmp_path / "new" / "dir"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", what="sweep")


def test_a_stray_config_yaml_above_the_output_is_not_a_run(tmp_path):
    (tmp_path / "config.yaml").write_text("project: settings\n")  # a project root, not a training run
    assert check_output_dir(tmp_path / "sweeps" / "a", what="sweep") == tmp_path / "sweeps" / "a"


def test_an_unfinished_run_is_refused_too(tmp_path):
    partial = tmp_path / "x.partial"
    partial.mkdir()
    (partial / "config.yaml").write_text("config: {}\n")  # what train writes first
    with pytest.raises(ConfigError, match=r"x.partial: exists, is not empty and holds no sweep"):
        check_output_dir(partial, what="sweep", own=("sweep.json",))
