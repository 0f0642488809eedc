"""What a person reads: the data warning, the summary blocks and plain progress lines in a log."""

from __future__ import annotations

import pytest

from oloraplus import console
from oloraplus.config import TrainConfig

STATS = {"examples_available": 1319, "train_examples": 7, "train_truncated": 7, "train_dropped": 0,
         "eval_examples": 2, "eval_truncated": 0, "eval_dropped": 2}


def test_warning_names_dropped_and_mostly_truncated_splits_and_the_flag():
    warning = console.data_warning(STATS, 96)
    assert warning.startswith("warning:") and "--max-length 96" in warning
    assert "train 7 of 7 truncated; eval 2 of 4 dropped (dropped: no reply token left)" in warning


def test_no_warning_at_ten_percent_truncated_or_less():
    stats = {**STATS, "train_examples": 10, "train_truncated": 1, "eval_dropped": 0}
    assert console.data_warning(stats, 96) is None
    assert "train 1 of 9 truncated;" in console.data_warning({**stats, "train_examples": 9, "train_truncated": 1}, 96)


def test_train_summary_has_counts_losses_speed_and_place():
    metrics = {**STATS, "steps": 2, "train_loss": 4.3251, "eval_loss": 0.5551, "perplexity": 1.742,
               "eval_tokens": 31, "tokens_per_s": 123.4, "seconds_per_step": 3.05, "load_s": 1.0,
               "train_runtime_s": 6.1, "resumed_from_step": 0}
    text = "\n".join(console.train_summary(metrics, "runs/x", 96, 12.3))
    for part in ("train: 7 examples (7 truncated, 0 dropped), 2 steps, mean train loss 4.3251",
                 "eval:  2 examples (0 truncated, 2 dropped), eval loss 0.5551, perplexity 1.74 over 31 tokens",
                 "123 tokens/s, 3.05 s/step", "12.3 s in all", "run:   runs/x", "--max-length 96"):
        assert part in text, part
    assert "resumed" not in text
    resumed = "\n".join(console.train_summary({**metrics, "steps": 20, "resumed_from_step": 4}, "r", 96, 1.0))
    assert "this session: steps 5-20, resumed from step 4" in resumed
    assert "compil" not in text  # an eager run (compile_s 0 or absent) says nothing about compiling
    compiled = "\n".join(console.train_summary({**metrics, "compile_s": 4.25}, "r", 96, 1.0))
    assert "s/step (compile time excluded)" in compiled and "train 6.1 s of which compiling 4.2 s)" in compiled


def test_track_prints_periodic_lines_in_a_log_and_nothing_when_silenced(monkeypatch, capsys):
    clock = iter(range(0, 1000, 6))  # each call 6 s later: a line every other batch
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    monkeypatch.setenv("OLORAPLUS_PROGRESS", "1")
    assert list(console.track(range(5), 5, "evaluating 10 examples")) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["  evaluating 10 examples: 2/5 batch", "  evaluating 10 examples: 4/5 batch"]
    monkeypatch.setenv("OLORAPLUS_PROGRESS", "0")
    assert list(console.track(range(5), 5, "x")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("kwargs", "want"), [
    ({"max_steps": 2, "batch_size": 2}, 32),  # 4 examples trained: the floor
    ({"max_steps": 50, "batch_size": 4}, 400),  # 2 × 200
    ({"max_steps": 50, "batch_size": 4, "train_size": 100}, 200),  # capped by the train split
    ({"max_steps": 1000}, 500),
    ({"max_steps": -1}, 500),  # epochs: the paper's default
    ({"max_steps": 2, "eval_size": 7}, 7),  # given explicitly: kept
])
def test_auto_eval_size_scales_with_a_short_run(kwargs, want):
    assert TrainConfig(**kwargs).eval_examples() == want


def test_singular_and_plural_in_every_summary_line():
    one = {"examples_available": 1, "train_examples": 1, "eval_examples": 1, "steps": 1, "train_loss": 1.0,
           "eval_loss": 1.0, "perplexity": 2.7, "eval_tokens": 1, "tokens_per_s": 1.0, "seconds_per_step": 1.0,
           "load_s": 1.0, "train_runtime_s": 1.0, "rougeL": 0.5, "bleu": 0.5, "generated_examples": 1}
    text = "\n".join(console.train_summary(one, "r", 96, 1.0) + console.eval_summary(one, "r", None, 96, 1.0)
                     + console.data_lines(one, 96))
    assert "1 step," in text and "1 example (" in text and "over 1 token;" in text and "on 1 generation" in text
    assert "of 1 record in" in text and "data: 1 record;" in text
    counts = text.replace("tokens/s", "")  # a rate's unit, not a count
    assert not any(p in counts for p in ("1 steps", "1 examples", "1 tokens", "1 records", "1 generations"))
    many = {**one, "steps": 2, "train_examples": 2, "eval_tokens": 1500, "examples_available": 2,
            "generated_examples": 3}
    text = "\n".join(console.train_summary(many, "r", 96, 1.0) + console.data_lines(many, 96))
    assert "2 steps," in text and "2 examples (" in text and "over 1,500 tokens" in text and "data: 2 records;" in text


def test_multi_turn_and_plain_text_counts():
    stats = {**STATS, "train_turns_lost": 3, "last_turn_only": 2}
    lines = console.data_lines(stats, 96)
    assert "train 7 examples (7 truncated, 0 dropped, 3 lost a trained turn)" in lines[0]
    assert lines[1] == ("note: 2 records: the chat template re-renders earlier turns, so only the last reply carries "
                        "loss there")
    text = {"examples_available": 40, "plain_text": True, "train_examples": 12, "train_documents": 30,
            "eval_examples": 1, "eval_documents": 10}
    assert console.data_lines(text, 32) == [
        "data: 40 plain-text documents (continued pretraining: loss on every token, packed into rows of 32 tokens); "
        "train 12 rows from 30 documents; eval 1 row from 10 documents"]


def test_a_validation_split_is_counted_in_the_data_line():
    stats = {"examples_available": 50, "train_examples": 20, "eval_examples": 10, "val_examples": 8,
             "val_truncated": 5, "val_dropped": 0}
    lines = console.data_lines(stats, 64)
    assert lines[0] == ("data: 50 records; train 20 examples (0 truncated, 0 dropped); eval 10 examples (0 truncated, "
                        "0 dropped); val 8 examples (5 truncated, 0 dropped)")
    assert "val 5 of 8 truncated" in lines[1]
    assert "; val " not in console.data_lines({k: v for k, v in stats.items() if not k.startswith("val")}, 64)[0]
