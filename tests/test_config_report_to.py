"""`--report-to`: the trackers transformers' Trainer logs to, checked before any model loads."""

import argparse

import pytest
from transformers import TrainingArguments
from transformers.integrations import integration_utils

from oloraplus.config import TrainConfig, add_arguments, report_targets, resolve
from oloraplus.errors import ConfigError


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    return resolve(TrainConfig, parser.parse_args(argv))


@pytest.fixture
def installed(monkeypatch):
    """Pretend tensorboard and wandb are installed (neither is in the test environment)."""
    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard", "wandb"])


def test_default_is_none_and_means_no_tracker(tmp_path):
    cfg = parse([])
    assert cfg.report_to == "none" and report_targets(cfg.report_to) == []
    # what transformers itself makes of it: no integration either
    assert TrainingArguments(output_dir=str(tmp_path), report_to=report_targets(cfg.report_to)).report_to == []


def test_flag_and_yaml_key(installed, tmp_path):
    assert report_targets(parse(["--report-to", "wandb, tensorboard"]).report_to) == ["wandb", "tensorboard"]
    path = tmp_path / "c.yaml"
    path.write_text("report_to: tensorboard\n")
    cfg = parse(["--config", str(path)])
    assert cfg.report_to == "tensorboard" and report_targets(cfg.report_to) == ["tensorboard"]


def test_every_name_transformers_accepts_is_known(monkeypatch):
    names = sorted(integration_utils.INTEGRATION_TO_CALLBACK)
    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: names)
    assert report_targets(",".join(names)) == names
    # and transformers builds a callback for each of them: the same list it validates against
    assert len(integration_utils.get_reporting_integration_callbacks(names)) == len(names)


@pytest.mark.parametrize("value, match", [
    ("tensorbord", "unknown tracker 'tensorbord'"),
    ("none,wandb", "unknown tracker 'none'"),
    ("wandb,wandb", "distinct tracker names"),
    ("", "distinct tracker names"),
])
def test_bad_values_name_the_flag(installed, value, match):
    with pytest.raises(ConfigError, match=match):
        parse(["--report-to", value])


def test_tracker_that_is_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(ConfigError, match=r"--report-to tensorboard: its package is not installed \(pip install "
                                          r"'oloraplus\[tensorboard\]'\)"):
        parse(["--report-to", "tensorboard"])


def test_yaml_list_is_a_type_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("report_to: [wandb]\n")
    with pytest.raises(ConfigError, match="key 'report_to': expected str"):
        parse(["--config", str(path)])
