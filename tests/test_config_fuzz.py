"""Property tests for the config loader: any YAML text, any mapping -> a valid TrainConfig or a one-line ConfigError;
and every config inside the documented ranges -> accepted, holding exactly the values given.

The "any input" strategies leave out inputs that broke the contract once (control characters in the YAML text,
line breaks in keys, integers beyond float range, nesting deeper than Python's recursion limit); each is now a
one-line ConfigError, checked by `test_inputs_outside_the_strategies_are_one_line_config_errors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oloraplus.config import METHODS, OHORA_INITS, SCHEDULERS, TrainConfig, build_config, resolve, to_dict
from oloraplus.errors import ConfigError

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on
FLOAT_SAFE_INT = 2**1000  # beyond ~1.8e308 an int cannot become a float (see KNOWN_GAPS)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])

texts = st.text(st.characters(blacklist_characters=LINE_BREAKS, blacklist_categories=("Cs",)), max_size=20)
ints = st.integers(-FLOAT_SAFE_INT, FLOAT_SAFE_INT)
scalars = st.none() | st.booleans() | ints | st.floats() | texts
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                        max_leaves=8)


def plausible(name: str) -> st.SearchStrategy:
    """Values near the valid ones for one field (right type, edge values), plus anything at all."""
    field, hint = FIELDS[name], HINTS[name]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if name == "method":
        typed = st.sampled_from(METHODS) | texts
    elif name == "scheduler":
        typed = st.sampled_from(SCHEDULERS) | texts
    elif hint is bool:
        typed = st.booleans()
    elif hint is int:
        typed = st.integers(-3, 70) | ints
    elif hint is float:
        typed = st.floats(-2, 2) | st.floats() | st.integers(-3, 70) | st.sampled_from(["3e-4", "1e-3", "nan", "-inf"])
    elif hint == list[str]:
        typed = st.lists(texts, max_size=3) | texts
    else:
        typed = texts | st.just("out")
    return st.just(default) | typed | anything


def key_spelling(name: str) -> st.SearchStrategy:
    return st.sampled_from([name, name.replace("_", "-")])


mappings = st.fixed_dictionaries({}, optional={name: plausible(name) for name in FIELDS}) | st.dictionaries(
    st.sampled_from(sorted(FIELDS)).flatmap(key_spelling) | texts | ints, anything, max_size=6)


def assert_one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message and message == message.splitlines()[0], repr(message)


def assert_round_trips(cfg: TrainConfig) -> None:
    """A valid config survives config.yaml (what eval and --resume read back) unchanged."""
    again = build_config(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))), "config.yaml")
    assert again == cfg and again.validate() == cfg


@SETTINGS
@given(mappings)
def test_any_mapping_builds_a_valid_config_or_one_line_config_error(mapping):
    try:
        cfg = build_config(TrainConfig, mapping, "sweep.yaml").validate()
    except ConfigError as exc:
        assert_one_line(exc)
        return
    assert isinstance(cfg, TrainConfig)
    assert_round_trips(cfg)


# YAML itself refuses control characters; which ones, and the one-line message it should then give, is the
# `control-character` gap below.
yaml_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
yaml_texts = (
    st.text(yaml_chars | st.sampled_from("\n\t :-[]{}'\"#&*!|>%@`,?"), max_size=80)
    | mappings.map(lambda m: yaml.safe_dump(m, allow_unicode=True))
    | st.tuples(mappings.map(lambda m: yaml.safe_dump(m, allow_unicode=True)), st.integers(0, 200)).map(
        lambda pair: pair[0][: pair[1]])  # cut anywhere: half-written files
)


@SETTINGS
@given(text=yaml_texts)
@example(text="rank: 8\nratio: 0.5\nmethod: olora\ntarget_modules: [q_proj, v_proj]\n")
@example(text="!!python/object/apply:os.system ['true']")
@example(text="rank: &a 4\nalpha: *a\n")
@example(text="- rank\n- 4\n")
@example(text="\ufeffrank: 4\n")
def test_any_yaml_text_builds_a_valid_config_or_one_line_config_error(text, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = resolve(TrainConfig, argparse.Namespace(config=str(path)))
    except ConfigError as exc:
        assert_one_line(exc)
        return
    assert isinstance(cfg, TrainConfig)
    assert_round_trips(cfg)


@pytest.mark.parametrize("raw", [b"rank: \xff\xfe\n", b"\xfe\xff\x00r\x00a", b"rank: 4\n\xc3"])
def test_non_utf8_config_is_a_one_line_config_error(tmp_path, raw):
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        resolve(TrainConfig, argparse.Namespace(config=str(path)))
    assert_one_line(info.value)


def yaml_file(tmp_path: Path, text: str) -> argparse.Namespace:
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    return argparse.Namespace(config=str(tmp_path / "config.yaml"))


# The inputs the strategies leave out, each once a gap in config.py: now one-line ConfigErrors.
KNOWN_GAPS = [
    pytest.param("rank: 1" + "0" * 400, id="int-beyond-float-range-in-validate"),
    pytest.param("lr: 1" + "0" * 400, id="int-beyond-float-range-for-a-float-field"),
    pytest.param("rank: " + "[" * 1500 + "]" * 1500, id="nesting-deeper-than-the-recursion-limit"),
    pytest.param("rank: 4\x0e\n", id="control-character"),
    pytest.param('"rank\\nsize": 4\n', id="line-break-in-a-key"),
]


@pytest.mark.parametrize("text", KNOWN_GAPS)
def test_inputs_outside_the_strategies_are_one_line_config_errors(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        resolve(TrainConfig, yaml_file(tmp_path, text))
    assert_one_line(info.value)


# The documented range of every option (its help text and docs/reliability.md), written out here rather than read
# from config.py, so that a validate() that rejects valid values fails these tests. An option missing here keeps
# its default (a new option added elsewhere is still covered by the default being valid).
FINITE = dict(allow_nan=False, allow_infinity=False)
positive_float = st.floats(min_value=1e-12, max_value=1e6, **FINITE)
VALID = {
    "model": texts.filter(str.strip), "data": texts.filter(str.strip), "method": st.sampled_from(METHODS),
    "ratio": positive_float, "rank": st.integers(1, 4096), "alpha": positive_float,
    "ohora_init": st.sampled_from(OHORA_INITS), "dropout": st.floats(0, 1, exclude_max=True),
    "lr": positive_float, "weight_decay": st.floats(0, 10, **FINITE), "warmup_ratio": st.floats(0, 1),
    "scheduler": st.sampled_from(SCHEDULERS), "epochs": positive_float,
    "max_steps": st.just(-1) | st.integers(1, 10**6),
    "batch_size": st.integers(1, 4096), "grad_accum": st.integers(1, 512), "max_length": st.integers(8, 10**6),
    "train_size": st.integers(1, 10**7), "eval_size": st.integers(0, 10**6), "seed": ints,
    "val_size": st.integers(0, 10**6), "split_seed": st.just(-1) | st.integers(0, 2**31 - 1),
    "target_modules": st.lists(st.from_regex(r"[a-z_][a-z0-9_.]{0,12}", fullmatch=True), max_size=4),
    "group_by_length": st.booleans(), "response_only_loss": st.booleans(), "packing": st.booleans(),
    "tokens_per_batch": st.integers(0, 10**7), "diagnostics_steps": st.integers(-1, 10**6),
    "logging_steps": st.integers(1, 10**6), "eval_steps": st.integers(0, 10**6), "eval_generate": st.integers(0, 10**6),
    "max_new_tokens": st.integers(1, 10**5), "generate_batch_size": st.integers(1, 4096),
    "save_steps": st.integers(0, 10**6), "resume": st.booleans(), "report_to": st.just("none"),
    "trust_remote_code": st.booleans(), "overwrite": st.booleans(), "output": texts.filter(str.strip),
}


def valid_value(name: str) -> st.SearchStrategy:
    field = FIELDS[name]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return VALID.get(name, st.just(default))


valid_mappings = st.fixed_dictionaries({}, optional={name: valid_value(name) for name in FIELDS})
EDGES = {"dropout": 0.0, "warmup_ratio": 1.0, "weight_decay": 0.0, "max_length": 8, "max_steps": 1, "rank": 1,
         "batch_size": 1, "grad_accum": 1, "train_size": 1, "eval_size": 0, "val_size": 0, "split_seed": -1, "diagnostics_steps": -1, "logging_steps": 1,
         "eval_steps": 0, "eval_generate": 0, "max_new_tokens": 1, "generate_batch_size": 1, "save_steps": 0,
         "tokens_per_batch": 0, "target_modules": []}  # each range's edge that is still valid


def test_the_valid_ranges_name_real_options():
    assert set(VALID) <= set(FIELDS)


@SETTINGS
@given(valid_mappings, st.booleans())
@example({}, False)  # every default
@example(EDGES, True)
def test_every_config_in_the_documented_ranges_is_accepted_as_given(mapping, dashes):
    spelled = {(key.replace("_", "-") if dashes else key): value for key, value in mapping.items()}
    cfg = build_config(TrainConfig, spelled, "sweep.yaml").validate()  # a ConfigError here fails the test
    assert {key: getattr(cfg, key) for key in mapping} == mapping
    assert_round_trips(cfg)


@SETTINGS
@given(mapping=valid_mappings)
@example(mapping=EDGES)
def test_every_config_in_the_documented_ranges_is_accepted_from_a_yaml_file(mapping, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    cfg = resolve(TrainConfig, argparse.Namespace(config=str(path)))
    assert {key: getattr(cfg, key) for key in mapping} == mapping
