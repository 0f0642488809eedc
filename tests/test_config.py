import argparse
import math

import pytest

from oloraplus.config import TrainConfig, add_arguments, build_config, check_ratio, resolve
from oloraplus.errors import ConfigError


def parse(argv, tmp_path=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    return resolve(TrainConfig, parser.parse_args(argv))


def test_defaults_follow_the_paper():
    cfg = parse([])
    assert (cfg.rank, cfg.alpha, cfg.lr, cfg.epochs, cfg.train_size) == (32, 16.0, 3e-4, 1.0, 1000)
    assert (cfg.eval_size, cfg.eval_examples()) == (0, 500)  # auto: the paper's 500 for an epoch run
    assert cfg.method == "olora" and cfg.ratio == 1.0


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rank: 8\nratio: 4\nlr: 1e-3\nmax-steps: 7\ntarget_modules: [q_proj, v_proj]\n")
    cfg = parse(["--config", str(path), "--rank", "16"])
    assert cfg.rank == 16 and cfg.ratio == 4.0 and cfg.lr == 1e-3 and cfg.max_steps == 7
    assert cfg.target_modules == ["q_proj", "v_proj"]


def test_help_shows_each_default_once(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    text = " ".join(parser.format_help().split())
    assert "(default: every linear layer in the transformer blocks, never lm_head or the embeddings)" in text and "(default: [])" not in text
    assert "adapter rank r (default: 32)" in text
    assert all(line.count("(default:") <= 1 for line in text.split("--"))


def test_help_overrides_reword_one_flag_and_must_name_a_field():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig, help_overrides={"output": "where the search goes (default: elsewhere)"})
    text = " ".join(parser.format_help().split())
    assert "where the search goes (default: elsewhere)" in text and "run directory to write" not in text
    assert parser.parse_args(["--output", "x"]).output == "x"
    with pytest.raises(ValueError, match="has no field 'ouput'"):
        add_arguments(argparse.ArgumentParser(), TrainConfig, help_overrides={"ouput": "typo"})


def test_sweep_files_get_the_same_hint_as_train_configs(tmp_path):
    from oloraplus.experiments.sweep import plan_sweep

    path = tmp_path / "s.yaml"
    path.write_text("base: {learning_rate: 1e-3}\ngrid: {ratio: [1, 4]}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: base: unknown key 'learning_rate' \(did you mean 'lr'\?\)"):
        plan_sweep(path)


def test_comma_separated_target_modules_flag():
    assert parse(["--target-modules", "q_proj, k_proj"]).target_modules == ["q_proj", "k_proj"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("rnak: 8\n", "unknown key 'rnak' (did you mean 'rank'?)"),
        ("learning_rate: 1e-3\n", "unknown key 'learning_rate' (did you mean 'lr'?)"),  # other trainers' names
        ("num_train_epochs: 2\n", "unknown key 'num_train_epochs' (did you mean 'epochs'?)"),
        ("rank: eight\n", "key 'rank': expected int, got str"),
        ("group_by_length: 3\n", "key 'group_by_length': expected true/false"),
        ("- a\n- b\n", "expected a mapping"),
        ("rank: [\n", "invalid YAML"),
        ("target_modules: 3\n", "expected a list of strings"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        parse(["--config", str(path)])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_ratio_must_be_finite_and_positive(ratio):
    with pytest.raises(ConfigError, match="--ratio"):
        check_ratio(ratio)
    with pytest.raises(ConfigError, match="--ratio"):
        build_config(TrainConfig, {"ratio": ratio}, "test").validate()


@pytest.mark.parametrize("ratio", [1 / 16, 0.25, 1.0, 4.0, 16.0])
def test_both_regimes_are_allowed(ratio):
    assert build_config(TrainConfig, {"ratio": ratio}, "test").validate().ratio == ratio


@pytest.mark.parametrize(
    "values, flag",
    [
        ({"rank": 0}, "--rank"),
        ({"rank": -3}, "--rank"),
        ({"lr": 0.0}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"max_steps": 0}, "--max-steps"),
        ({"method": "qlora"}, "--method"),
        ({"max_length": 2}, "--max-length"),
        ({"dropout": 1.5}, "--dropout"),
        ({"ohora_init": "literal"}, "--ohora-init"),
    ],
)
def test_invalid_values_name_the_flag(values, flag):
    with pytest.raises(ConfigError, match=flag):
        build_config(TrainConfig, values, "test").validate()


def test_unknown_method_flag_is_rejected_by_argparse():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--method", "qlora"])
    assert exc.value.code == 2


def test_ohora_init_defaults_to_ranked_and_paper_is_a_choice():
    assert parse([]).ohora_init == "ranked"
    assert parse(["--ohora-init", "paper"]).ohora_init == "paper"


def test_compile_and_fsdp_together_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^--compile with --fsdp: not supported yet .*drop one of the two$"):
        TrainConfig(fsdp=True, compile=True).validate()
    TrainConfig(fsdp=True).validate()
    TrainConfig(compile=True).validate()
