"""The run directory: where a run writes, and the one reader and writer of its config and metrics."""

import json

import pytest

from oloraplus import rundir
from oloraplus.config import TrainConfig
from oloraplus.errors import ConfigError


def test_new_output_runs_in_partial_then_swaps(tmp_path):
    run = rundir.plan_run_dir(tmp_path / "r", overwrite=False, resume=False)
    rundir.start(run, resume=False)
    (run.work / "config.yaml").write_text("x")
    assert not run.final.exists()
    rundir.finish(run)
    assert (run.final / "config.yaml").is_file() and not run.work.exists()


def test_existing_run_needs_overwrite_and_is_kept_until_the_new_one_finishes(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.yaml").write_text("old")
    with pytest.raises(ConfigError, match="--overwrite"):
        rundir.plan_run_dir(out, overwrite=False, resume=False)
    run = rundir.plan_run_dir(out, overwrite=True, resume=False)
    rundir.start(run, resume=False)
    (run.work / "config.yaml").write_text("new")
    assert (out / "config.yaml").read_text() == "old"
    rundir.finish(run)
    assert (out / "config.yaml").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_foreign_directory_is_never_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not an oloraplus run"):
        rundir.plan_run_dir(tmp_path, overwrite=True, resume=False)


def test_unfinished_run_needs_resume_or_overwrite(tmp_path):
    work = tmp_path / "r.partial"
    work.mkdir()
    (work / "config.yaml").write_text("x")
    with pytest.raises(ConfigError, match="--resume"):
        rundir.plan_run_dir(tmp_path / "r", overwrite=False, resume=False)
    assert rundir.plan_run_dir(tmp_path / "r", overwrite=False, resume=True).work == work


def test_resume_without_partial_run_fails(tmp_path):
    with pytest.raises(ConfigError, match="no unfinished run"):
        rundir.plan_run_dir(tmp_path / "r", overwrite=False, resume=True)


def test_unwritable_output_fails_before_training():
    # /proc refuses new files even to root, like a read-only or full disk would
    with pytest.raises(ConfigError, match="not writable"):
        rundir.plan_run_dir("/proc/oloraplus-run", overwrite=False, resume=False)


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        rundir.plan_run_dir(tmp_path / "f", overwrite=True, resume=False)


def test_the_recorded_config_reads_back_as_written(tmp_path):
    cfg = TrainConfig(method="lora", rank=4, output=str(tmp_path))
    rundir.write_config(tmp_path, cfg, {"base_fingerprint": "abc"})
    assert rundir.is_run(tmp_path) and not rundir.is_training_run(tmp_path)  # no result yet
    assert rundir.read_config(tmp_path)["rank"] == 4
    assert rundir.load_run_config(tmp_path) == cfg


@pytest.mark.parametrize("text, problem", [("config: [\n", "cannot read"), ("- 1\n", "no 'config' section"),
                                           ("config: 3\n", "no 'config' section")])
def test_an_unreadable_config_is_one_config_error_naming_the_file(tmp_path, text, problem):
    (tmp_path / rundir.CONFIG_FILE).write_text(text)
    for read in (rundir.read_config, rundir.load_run_config):
        with pytest.raises(ConfigError, match=f"config.yaml: {problem}"):
            read(tmp_path)
    assert rundir.recorded_config(tmp_path) is None  # a sweep treats it as some other run
    run = rundir.RunDir(final=tmp_path / "r", work=tmp_path)
    with pytest.raises(ConfigError, match=f"^--resume: .*config.yaml: {problem}.*; pass --overwrite to start over$"):
        rundir.check_resume_config(run, {"rank": 4})


def test_resume_refuses_a_changed_option_but_not_a_per_run_one(tmp_path):
    rundir.write_config(tmp_path, TrainConfig(rank=4, output="a"))
    run = rundir.RunDir(final=tmp_path / "r", work=tmp_path)
    rundir.check_resume_config(run, {"rank": 4, "output": "b", "overwrite": True, "resume": True})
    with pytest.raises(ConfigError, match=r"--resume: --rank is 8 but the unfinished run in .* used 4"):
        rundir.check_resume_config(run, {"rank": 8})


def test_metrics_updates_keep_what_other_commands_recorded(tmp_path):
    rundir.update_metrics(tmp_path, {"eval_loss": 2.0})  # no metrics.json yet: started
    rundir.update_metrics(tmp_path, {"gsm8k": {"acc": 0.1}}, under="harness")
    rundir.update_metrics(tmp_path, {"arc": {"acc": 0.2}}, under="harness")
    rundir.update_metrics(tmp_path, {"eval_loss": 1.5, "eval:x.json": {"eval_loss": 3.0}})
    assert json.loads((tmp_path / rundir.METRICS_FILE).read_text()) == rundir.read_metrics(tmp_path) == {
        "eval_loss": 1.5, "harness": {"gsm8k": {"acc": 0.1}, "arc": {"acc": 0.2}}, "eval:x.json": {"eval_loss": 3.0}}


def test_a_finished_run_is_this_run_or_refused(tmp_path):
    planned = TrainConfig(method="lora", lr=1e-3, output=str(tmp_path))
    assert not rundir.is_finished(tmp_path, planned, what="sweep")  # nothing there
    rundir.write_config(tmp_path, TrainConfig(method="lora", lr=1e-3, output="elsewhere", overwrite=True))
    assert not rundir.is_finished(tmp_path, planned, what="sweep")  # started, not finished
    rundir.write_metrics(tmp_path, {"eval_loss": 1.0})
    assert rundir.is_finished(tmp_path, planned, what="sweep")  # output/overwrite/resume: set per run
    other = TrainConfig(method="lora", lr=2e-3)
    with pytest.raises(ConfigError, match=r"^compose-study: .* holds a finished run with a different config "
                                          r"\(lr: 0.001 != 0.002\); use another --output or delete that run$"):
        rundir.is_finished(tmp_path, other, what="compose-study")
    assert rundir.is_finished(tmp_path, other, what="sweep", ignore=(*rundir.PER_RUN, "lr"))


def test_a_relocated_file_option_compares_by_file_name(tmp_path):
    """A moved study still resumes: its merged data file is named by its content, not by where it lives."""
    rundir.write_config(tmp_path, TrainConfig(data="/old/study/data/merged-abc.jsonl"))
    rundir.write_metrics(tmp_path, {"eval_loss": 1.0})
    moved = TrainConfig(data="/new/study/data/merged-abc.jsonl")
    assert rundir.is_finished(tmp_path, moved, what="compose-study", relocated=("data",))
    with pytest.raises(ConfigError, match="different config"):
        rundir.is_finished(tmp_path, moved, what="compose-study")  # without it the path differs
    with pytest.raises(ConfigError, match=r"merged-abc\.jsonl' != '.*merged-def\.jsonl'"):
        rundir.is_finished(tmp_path, TrainConfig(data="/new/study/data/merged-def.jsonl"), what="compose-study",
                           relocated=("data",))
