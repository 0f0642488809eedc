"""The compose-study SPEC.yaml: its keys and checks, and the names of the runs and sums it implies.

Everything here runs before torch is imported, so a typo in the spec fails in a second; every error
names the file and the key.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from oloraplus import rundir
from oloraplus.adapters import registry
from oloraplus.config import TrainConfig, build_config, read_yaml
from oloraplus.errors import ConfigError

SPEC_KEYS = ("base", "domains", "merged", "baseline")
DOMAIN_KEYS = ("data", "train_size", "eval_size")
SET_BY_STUDY = ("data", *rundir.PER_RUN)  # per run; train_size/eval_size in base are defaults
MERGED_KEYS = ("max_steps", "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio")
BASELINES = ("all", "per_sum")
COMPOSABLE = tuple(m.name for m in registry.methods() if m.composable)  # plain base-relative LoRA: deltas add
MERGED = "merged"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Domain:
    name: str
    data: str
    train_size: int
    eval_size: int


@dataclass(frozen=True)
class StudySpec:
    source: str
    base: dict[str, Any]
    domains: tuple[Domain, ...]
    merged: dict[str, Any]
    baseline: str

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k).replace("-", "_"): v for k, v in value.items()}


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _domain(name: Any, value: Any, defaults: TrainConfig, source: str) -> Domain:
    where = f"{source}: domains: {name}"
    if not isinstance(name, str) or not _NAME.match(name) or name == "base" or name.startswith(MERGED):
        raise ConfigError(f"{where}: a domain name is letters, digits, '_', '.', '-', "
                          f"and not 'base' or '{MERGED}...'")
    values = {"data": value} if isinstance(value, str) else _mapping(value, where)
    unknown = [k for k in values if k not in DOMAIN_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (expected {', '.join(DOMAIN_KEYS)})")
    if not isinstance(values.get("data"), str) or not values["data"]:
        raise ConfigError(f"{where}: 'data' must name a data file or builtin")
    return Domain(name, values["data"], _size(values.get("train_size", defaults.train_size), f"{where}: train_size"),
                  _size(values.get("eval_size", defaults.eval_examples()), f"{where}: eval_size"))


def spec_from_mapping(raw: dict[str, Any], source: str) -> StudySpec:
    """Validate a study mapping; every error names the file and the key."""
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key '{unknown[0]}' (expected {', '.join(SPEC_KEYS)}; "
                          "training options go under base:)")
    base = _mapping(raw.get("base"), f"{source}: base")
    managed = [k for k in base if k in SET_BY_STUDY]
    if managed:
        raise ConfigError(f"{source}: base: key '{managed[0]}' is set by the study for each run; remove it")
    defaults = build_config(TrainConfig, base, f"{source}: base")
    if defaults.method not in COMPOSABLE:
        raise ConfigError(f"{source}: base: method '{defaults.method}' does not save a plain LoRA, so its adapters "
                          f"cannot be summed; choose one of {', '.join(COMPOSABLE)}")
    domains = raw.get("domains")
    if not isinstance(domains, dict) or len(domains) < 2:
        raise ConfigError(f"{source}: domains: need a mapping of at least two name: data entries")
    merged = _mapping(raw.get("merged"), f"{source}: merged")
    bad = [k for k in merged if k not in MERGED_KEYS]
    if bad:
        raise ConfigError(f"{source}: merged: key '{bad[0]}' cannot differ from the domain runs "
                          f"(allowed: {', '.join(MERGED_KEYS)})")
    build_config(TrainConfig, merged, f"{source}: merged")  # types
    baseline = raw.get("baseline", "all")
    if baseline not in BASELINES:
        raise ConfigError(f"{source}: baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")
    return StudySpec(source, base, tuple(_domain(n, v, defaults, source) for n, v in domains.items()),
                     merged, baseline)


def read_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found")
    return spec_from_mapping(read_yaml(path), str(path))


def sums(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every pair, then all domains together (once: with two domains the pair is the full sum)."""
    return list(itertools.combinations(names, 2)) + ([tuple(names)] if len(names) > 2 else [])


def label(domains: Sequence[str]) -> str:
    return "+".join(domains)
