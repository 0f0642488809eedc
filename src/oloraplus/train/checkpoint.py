"""Crash-safe checkpoints: each one appears whole or not at all, and `--resume` finds the last whole one.

`transformers.Trainer` writes `checkpoint-N/` file by file in place, so a kill or a full disk
mid-write would leave a half checkpoint that `--resume` then picks as the newest. We stage each
checkpoint in `.staging-checkpoint-N/` and rename it into place once every file is on disk:
a rename within one directory is atomic, so `checkpoint-N/` is complete or absent.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from oloraplus.errors import OloraError
from oloraplus.io import atomic_write_json, atomic_write_text, follow_umask
from oloraplus.rundir import FAILURE_FILE

PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR: its resume code looks for checkpoint-N
STAGING = ".staging-"
COMPLETE_MARKER = "trainer_state.json"  # the last file Trainer writes into a checkpoint
_CHECKPOINT = re.compile(rf"^{PREFIX}-(\d+)$")


class CheckpointError(OloraError):
    """A checkpoint could not be written (full disk, permissions); the previous one is intact."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}-{step}"


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first; staging leftovers and partial ones are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def last_checkpoint(directory: str | Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def staging_dir(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"{STAGING}{checkpoint_name(step)}"


def clean_staging(directory: str | Path) -> None:
    """Remove what a write killed midway left behind (it never was a checkpoint)."""
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(f"{STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root`, so the rename never publishes data still in flight."""
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(staged: Path, final: Path) -> None:
    """Rename a fully written `staged` checkpoint to `final`; a checkpoint already there is replaced."""
    follow_umask(staged)
    _fsync_tree(staged)
    if final.exists():  # the same step saved twice (e.g. at the end of an epoch): keep the newer
        old = final.with_name(f"{STAGING}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def trim_log(path: str | Path, step: int) -> None:
    """Drop the log lines a killed run wrote after the checkpoint it resumes from (they are redone)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def prepare_resume(checkpoints: str | Path, log_path: str | Path, failure_dir: str | Path) -> Path | None:
    """The checkpoint `--resume` continues from (None: start over in the same run directory).

    Cleans what the interrupted run left behind that the resumed one would otherwise mix in:
    staging leftovers, log lines after the checkpoint, and an earlier failure record.
    """
    clean_staging(checkpoints)
    resume_from = last_checkpoint(checkpoints)
    trim_log(log_path, checkpoint_step(resume_from) if resume_from else 0)
    (Path(failure_dir) / FAILURE_FILE).unlink(missing_ok=True)
    return resume_from


def write_failure(directory: str | Path, record: dict[str, Any]) -> Path:
    """`failure.json` next to the checkpoints: what stopped the run, at which step, and what is kept."""
    path = Path(directory) / FAILURE_FILE
    atomic_write_json(path, {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in record.items()})
    return path
