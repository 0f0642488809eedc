"""`train --eval-generate` and `oloraplus eval RUN_DIR` on a tiny model."""

import json
import re

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.eval import generate
from oloraplus.train.recipe import train


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, alpaca_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), rank=4, alpha=8, lr=3e-3,
                      max_steps=6, batch_size=4, max_length=64, train_size=40, eval_size=10, eval_generate=6,
                      max_new_tokens=8))
    return out


def test_train_eval_generate_writes_generations_and_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["generated_examples"] == 6
    assert {"prompt", "reference", "generation", "bleu", "rouge1", "rouge2", "rougeL"} <= set(rows[0])
    assert_library_scores(metrics, rows)


ASKED = re.compile(r"the word (\w+)")


def partly_right(model, tokenizer, prompts: list[str], **_) -> list[str]:
    """Stands in for the model's greedy replies: the asked-for word three times, then a wrong one ("Repeat the word
    gamma 2 times." -> "gamma gamma gamma beta"), so every score lies strictly between 0 and 100."""
    return [" ".join([ASKED.search(p).group(1)] * 3 + ["beta"]) for p in prompts]


def assert_library_scores(metrics: dict, rows: list[dict]) -> None:
    """metrics.json and every generations.jsonl row hold what sacrebleu and rouge-score give when called directly
    (English text: sacrebleu's default 13a tokenizer, rouge-score's default tokenizer with Porter stemming)."""
    hyps, refs = [r["generation"] for r in rows], [r["reference"] for r in rows]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs)]
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert metrics[key] == pytest.approx(100 * sum(d[key].fmeasure for d in direct) / len(rows), abs=1e-9)
    for row, hyp, ref, rouge in zip(rows, hyps, refs, direct):
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score, abs=1e-9)
        assert row["rougeL"] == pytest.approx(100 * rouge["rougeL"].fmeasure, abs=1e-9)


def test_generation_scores_in_metrics_and_rows_are_the_libraries(tiny_llama_dir, alpaca_file, tmp_path, monkeypatch):
    """The same path with replies that are partly right (a tiny random model's are all wrong: every score 0)."""
    monkeypatch.setattr(generate, "generate_batched", partly_right)
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), rank=4, max_steps=1,
                      batch_size=4, max_length=64, train_size=8, eval_size=6, eval_generate=6, max_new_tokens=8))
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == partly_right(None, None, [r["prompt"] for r in rows]) and len(rows) == 6
    assert 0 < metrics["bleu"] < 100 and all(0 < metrics[k] < 100 for k in ("rouge1", "rouge2", "rougeL"))
    assert_library_scores(metrics, rows)


def test_eval_command_reloads_the_adapter_and_reproduces_eval_loss(run_dir, capsys):
    before = json.loads((run_dir / "metrics.json").read_text())
    assert main(["eval", str(run_dir), "--generate", "6", "--max-new-tokens", "8"]) == 0
    after = json.loads((run_dir / "metrics.json").read_text())
    # reloaded onto the untouched base, the adapter gives the in-memory model's loss and generations
    assert after["eval_loss"] == pytest.approx(before["eval_loss"], abs=1e-5)
    assert after["bleu"] == pytest.approx(before["bleu"], abs=1e-6)
    assert f"eval loss {after['eval_loss']:.4f}" in capsys.readouterr().out


def test_eval_of_a_non_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not an oloraplus run" in capsys.readouterr().err


def _snapshot(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_eval_data_leaves_the_run_byte_identical_and_writes_its_own_directory(run_dir, alpaca_file, tmp_path, capsys):
    before = _snapshot(run_dir)
    out = tmp_path / "scores"
    assert main(["eval", str(run_dir), "--data", str(alpaca_file), "--output", str(out), "--generate", "4",
                 "--max-new-tokens", "4"]) == 0
    assert _snapshot(run_dir) == before  # metrics.json, generations.jsonl, everything
    scores = json.loads((out / "eval.json").read_text())
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert scores["data"] == str(alpaca_file) and scores["run"] == str(run_dir) and len(rows) == 4
    assert scores["eval_examples"] == 10  # the run's eval size, seeded as its split
    assert f"{out}/eval.json (the run {run_dir} is unchanged)" in capsys.readouterr().out


def test_eval_size_all_scores_every_example_of_the_file(run_dir, alpaca_file, tmp_path):
    from oloraplus.data.formats import load_examples

    before = _snapshot(run_dir)
    assert main(["eval", str(run_dir), "--data", str(alpaca_file), "--output", str(tmp_path / "all"),
                 "--eval-size", "all"]) == 0
    scores = json.loads((tmp_path / "all" / "eval.json").read_text())
    assert scores["eval_examples"] == len(load_examples(str(alpaca_file))) == 60 and scores["eval_size"] == "all"
    assert main(["eval", str(run_dir), "--data", str(alpaca_file), "--output", str(tmp_path / "n"),
                 "--eval-size", "25"]) == 0
    assert json.loads((tmp_path / "n" / "eval.json").read_text())["eval_examples"] == 25
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize(("extra", "match"), [
    (["--data", "{data}"], "--data: also pass --output DIR (eval --data never writes into"),
    (["--data", "{data}", "--output", "{run}/scores"], "is inside the training run"),
    (["--data", "{data}", "--output", "{run}"], "is an oloraplus training run"),
    (["--data", "{data}", "--output", "{tmp}/o", "--eval-size", "some"],
     "--eval-size: expected a number of examples >= 1 or 'all', got 'some'"),
    (["--data", "{data}", "--output", "{tmp}/o", "--eval-size", "0"], "--eval-size: expected a number"),
    (["--eval-size", "all"], "--eval-size: only with --data"),
])
def test_bad_eval_output_flags_exit_2_with_one_line_and_write_nothing(run_dir, alpaca_file, tmp_path, capsys, extra,
                                                                       match):
    before = _snapshot(run_dir)
    argv = [a.format(data=alpaca_file, run=run_dir, tmp=tmp_path) for a in extra]
    assert main(["eval", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert _snapshot(run_dir) == before and not (tmp_path / "o").exists()
