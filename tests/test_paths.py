"""Committed reports never show the absolute paths of the machine that made them."""

from pathlib import Path

from oloraplus.paths import portable_command, portable_path


def test_portable_path(tmp_path: Path):
    assert portable_path(tmp_path / "a" / "b.yaml", root=tmp_path) == "a/b.yaml"
    assert portable_path(tmp_path, root=tmp_path) == "."
    assert portable_path("/elsewhere/sweeps/high_rank", root=tmp_path) == "high_rank"
    assert portable_path("runs/x", root=tmp_path) == "runs/x"  # relative: unchanged
    assert portable_path("smollm2-135m", root=tmp_path) == "smollm2-135m"


def test_portable_command_rewrites_only_absolute_arguments(tmp_path: Path):
    command = f"oloraplus sweep {tmp_path}/s.yaml --output /work/sweeps/high_rank --data=/data/my\\ file.json --lr 1e-3"
    assert portable_command(command, root=tmp_path) == (
        "oloraplus sweep s.yaml --output high_rank '--data=my file.json' --lr 1e-3")
