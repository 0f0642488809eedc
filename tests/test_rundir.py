import pytest

from oloraplus.errors import ConfigError
from oloraplus import rundir


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
