"""A run directory: its files, its recorded config and metrics, and whether it finished.

One module owns the layout every command reads and writes (`train` writes it; `eval`, `merge`, `export`, `sweep`,
`report`, `compose` and `compose-study` read it), so no caller re-parses `config.yaml` or spells a file name.

A run writes into `<output>.partial/` and is renamed to `<output>` only when it finished, so a
crash, a bad record or Ctrl-C leaves `<output>` as it was. `--resume` continues a `.partial` run;
`--overwrite` replaces a finished run (and only an oloraplus run) once the new one has finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from oloraplus.config import TrainConfig, build_config, to_dict
from oloraplus.errors import ConfigError
from oloraplus.io import atomic_write_json, atomic_write_yaml

CONFIG_FILE = "config.yaml"  # the resolved options, written first: it marks a directory as a run
METRICS_FILE = "metrics.json"  # written last: a run with metrics finished (trained, or diverged and kept)
ADAPTER_DIR = "adapter"  # a finished run keeps its PEFT adapter here
LOG_FILE = "log.jsonl"
GENERATIONS_FILE = "generations.jsonl"
VALIDATION_PREFIX = "val_"  # metrics.json keys measured on the validation split (--val-size): val_eval_loss
HARNESS_SAMPLES_FILE = "harness_samples.jsonl"
FAILURE_FILE = "failure.json"
LOSS_PLOT = "loss.png"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"  # --report-to tensorboard's event files (checkpoints/ is deleted at the end)
PER_RUN = ("output", "overwrite", "resume")  # set for each run (by the user, a sweep, a study): never compared


@dataclass(frozen=True)
class RunDir:
    final: Path
    work: Path

    @property
    def checkpoints(self) -> Path:
        return self.work / CHECKPOINTS_DIR


def is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def is_training_run(path: Path) -> bool:
    """config.yaml plus a result (metrics.json or adapter/): what `train` leaves; a stray config.yaml is not one."""
    return is_run(path) and (has_metrics(path) or (path / ADAPTER_DIR).is_dir())


def has_metrics(path: Path) -> bool:
    """metrics.json is written last, so a run that has it finished (trained, or diverged and kept by a sweep)."""
    return (path / METRICS_FILE).is_file()


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
    return f"not an oloraplus run (no {CONFIG_FILE})"


def write_config(run_dir: Path, cfg: TrainConfig, extra: dict[str, Any] | None = None) -> None:
    """config.yaml: the resolved options under `config`, then what else the run records (base, data, versions)."""
    atomic_write_yaml(run_dir / CONFIG_FILE, {"config": to_dict(cfg), **(extra or {})})


def read_config(run_dir: Path) -> dict[str, Any]:
    """The `config` mapping a run recorded, with options added since filled in as those runs ran.

    The one reader of config.yaml; a ConfigError names the file when it cannot be read or has no such mapping.
    """
    path = run_dir / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})".splitlines()[0]) from None
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: no 'config' section")
    # Recorded before --ohora-init existed: OHoRA used the literal init; other methods ignore it (default).
    config.setdefault("ohora_init", "paper" if config.get("method") == "ohora" else "ranked")
    return config


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """`read_config`, or None when the run has no readable config (a sweep then treats it as another run)."""
    try:
        return read_config(run_dir)
    except ConfigError:
        return None


def load_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig a finished run recorded (eval and merge rebuild its model and data from it)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: {_why_not_a_run(run_dir)}")
    return build_config(TrainConfig, read_config(run_dir), str(path))


def comparable(cfg: TrainConfig, ignore: Sequence[str] = PER_RUN) -> dict[str, Any]:
    """The options that make two runs the same run."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ignore}


def config_differences(planned: TrainConfig, recorded: dict[str, Any] | None,
                       ignore: Sequence[str] = PER_RUN) -> list[str]:
    """'key: recorded != planned' for every option that differs (those in `ignore` aside)."""
    want = comparable(planned, ignore)
    if recorded is None:
        return [f"{CONFIG_FILE}: missing or unreadable"]
    try:
        got = comparable(build_config(TrainConfig, recorded, CONFIG_FILE), ignore)
    except ConfigError as exc:
        return [str(exc)]
    return [f"{k}: {got[k]!r} != {want[k]!r}" for k in want if got[k] != want[k]]


def is_finished(run_dir: Path, planned: TrainConfig, *, what: str, ignore: Sequence[str] = PER_RUN,
                relocated: Sequence[str] = ()) -> bool:
    """True when `run_dir` holds a finished run of `planned`; ConfigError when it holds a finished run of another
    config, so a `what` (sweep, study) that reuses its directory never mixes runs.

    `relocated`: path options compared by file name only, for files that live inside the moved directory and are
    named by their content (the compose study's merged data): a moved or copied directory still resumes.
    """
    if not has_metrics(run_dir):
        return False
    recorded = recorded_config(run_dir)
    if recorded:
        recorded = {**recorded, **{key: str(Path(getattr(planned, key)).with_name(Path(str(recorded.get(key))).name))
                                   for key in relocated}}
    differences = config_differences(planned, recorded, ignore)
    if differences:
        raise ConfigError(f"{what}: {run_dir} holds a finished run with a different config "
                          f"({'; '.join(differences[:3])}); use another --output or delete that run")
    return True


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a finished run."""
    return json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write_json(run_dir / METRICS_FILE, metrics)


def update_metrics(run_dir: Path, values: dict[str, Any], *, under: str | None = None) -> None:
    """Merge `values` into metrics.json (top level, or into the mapping at key `under`), keeping what training and
    earlier evaluations recorded there."""
    stored = read_metrics(run_dir) if has_metrics(run_dir) else {}
    (stored.setdefault(under, {}) if under else stored).update(values)
    write_metrics(run_dir, stored)


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
    """`--resume` continues the same run: every option but those in PER_RUN must match the recorded one."""
    try:
        recorded = read_config(run.work)
    except ConfigError as exc:
        raise ConfigError(f"--resume: {exc}; pass --overwrite to start over") from None
    changed = [key for key in config if key not in PER_RUN and recorded.get(key) != config[key]]
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
