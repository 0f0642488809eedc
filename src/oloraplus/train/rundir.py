"""Run directories that never mix runs and never expose half-written results.

A run writes into `<output>.partial/` and is renamed to `<output>` only when it finished, so a
crash, a bad record or Ctrl-C leaves `<output>` as it was. `--resume` continues a `.partial` run;
`--overwrite` replaces a finished run (and only an oloraplus run) once the new one has finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from oloraplus.errors import ConfigError

RUN_MARKER = "config.yaml"
ADAPTER_DIR = "adapter"  # a finished run keeps its PEFT adapter here
PER_INVOCATION = ("output", "overwrite", "resume")  # may differ between a run and its resumption


@dataclass(frozen=True)
class RunDir:
    final: Path
    work: Path

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"


def is_run(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def is_training_run(path: Path) -> bool:
    """config.yaml plus a result (metrics.json or adapter/): what `train` leaves; a stray config.yaml is not one."""
    return is_run(path) and ((path / "metrics.json").is_file() or (path / ADAPTER_DIR).is_dir())


def check_output_dir(output: str | Path, *, what: str, own: Sequence[str] = (), flag_name: str = "--output") -> Path:
    """Refuse to write `what` (a sweep, a merged model, ...) into or under a training run, or into a non-empty
    directory holding anything but an earlier `what` (recognised by the glob patterns `own`, so it resumes).

    `train` has `plan_run_dir`; every other command that writes a directory asks here. Creates nothing.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{flag_name} {output}: exists and is not a directory")
    if is_training_run(output):
        raise ConfigError(f"{flag_name} {output}: is an oloraplus training run; write the {what} to another directory")
    run = next((parent for parent in output.absolute().parents if is_training_run(parent)), None)
    if run is not None:
        raise ConfigError(f"{flag_name} {output}: is inside the training run {run}; "
                          f"write the {what} to another directory")
    if output.is_dir() and any(output.iterdir()) and not any(any(output.glob(pattern)) for pattern in own):
        held = f", is not empty and holds no {what}" if own else " and is not empty"  # own: what resumes there
        raise ConfigError(f"{flag_name} {output}: exists{held}; choose a new or empty directory")
    _check_writable(output, flag_name)
    return output


def _why_not_a_run(run_dir: Path) -> str:
    """The first thing a user must fix: a typo in the path, an unfinished run, or a directory of something else."""
    partial = run_dir.with_name(run_dir.name + ".partial")
    if not run_dir.exists():
        if partial.is_dir():
            return f"run directory does not exist: the run has not finished ({partial} holds it)"
        return "run directory does not exist"
    if not run_dir.is_dir():
        return "not a directory"
    return "not an oloraplus run (no config.yaml)"


def load_run_config(run_dir: Path) -> Any:
    """The TrainConfig a finished run recorded (eval and merge rebuild its model and data from it)."""
    from oloraplus.config import TrainConfig, build_config

    path = run_dir / RUN_MARKER
    if not path.is_file():
        raise ConfigError(f"{run_dir}: {_why_not_a_run(run_dir)}")
    values = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("config")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: no 'config' section")
    return build_config(TrainConfig, values, str(path))


def _check_writable(output: Path, flag_name: str) -> None:
    """Fail before any training if the output cannot be written (read-only disk, permissions)."""
    probe_dir = output.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"{flag_name} {output}: {probe_dir} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag_name} {output}: {probe_dir} is not writable ({exc.strerror})") from None


def paths(output: str | Path) -> RunDir:
    final = Path(output)
    return RunDir(final=final, work=final.with_name(final.name + ".partial"))


def plan_run_dir(output: str | Path, *, overwrite: bool, resume: bool, flag_name: str = "--output") -> RunDir:
    """Decide where the run writes, refusing every case that would mix or lose runs. Creates nothing."""
    final, work = paths(output).final, paths(output).work
    if final.exists() and not final.is_dir():
        raise ConfigError(f"{flag_name} {final}: exists and is not a directory")
    if final.is_dir() and any(final.iterdir()):
        if not is_run(final):
            raise ConfigError(f"{flag_name} {final}: exists and is not an oloraplus run; choose another directory")
        if resume:
            raise ConfigError(f"{flag_name} {final}: this run already finished; nothing to resume")
        if not overwrite:
            raise ConfigError(f"{flag_name} {final}: already holds a run; pass --overwrite to replace it")
    if resume and not is_run(work):
        raise ConfigError(f"--resume: no unfinished run at {work}")
    if work.exists() and not resume and not overwrite:
        raise ConfigError(
            f"{flag_name} {final}: an unfinished run is in {work}; "
            "pass --resume to continue it or --overwrite to restart"
        )
    _check_writable(final, flag_name)
    return RunDir(final=final, work=work)


def check_resume_config(run: RunDir, config: dict[str, Any]) -> None:
    """`--resume` continues the same run: every option but output/overwrite/resume must match the recorded one."""
    marker = run.work / RUN_MARKER
    try:
        recorded = yaml.safe_load(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--resume: cannot read {marker} ({exc})".splitlines()[0]) from None
    recorded = recorded.get("config") if isinstance(recorded, dict) else None
    if not isinstance(recorded, dict):
        raise ConfigError(f"--resume: {marker} has no 'config' section; pass --overwrite to start over")
    changed = [key for key in config if key not in PER_INVOCATION and recorded.get(key) != config[key]]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"--resume: --{key.replace('_', '-')} is {config[key]!r} but the unfinished run in {run.work} used "
            f"{recorded.get(key)!r}; repeat its options or pass --overwrite to start over"
        )


def start(run: RunDir, *, resume: bool) -> None:
    if run.work.exists() and not resume:
        shutil.rmtree(run.work)
    run.work.mkdir(parents=True, exist_ok=True)


def finish(run: RunDir) -> None:
    """Swap the finished run into place; an older run (only with --overwrite) is removed after the swap."""
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    old = None
    if run.final.exists():
        old = run.final.with_name(f"{run.final.name}.old-{os.getpid()}")
        os.rename(run.final, old)
    os.rename(run.work, run.final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
