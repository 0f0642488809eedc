import math

import pytest
from rouge_score import rouge_scorer
import sacrebleu

from oloraplus.eval.textmetrics import corpus_bleu, generation_metrics, per_example_scores, rouge_f1

REFS = [
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She was running quickly to the station.",
]
HYPS = [
    "The cat sat on a mat.",
    "The capital of France is Paris.",
    "Water boils at 100 degrees at sea level.",
    "She runs quick to the train station.",
]


def test_corpus_bleu_equals_sacrebleu():
    assert corpus_bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)


def test_corpus_bleu_is_not_the_mean_of_sentence_bleu():
    sentence_mean = sum(row["bleu"] for row in per_example_scores(HYPS, REFS)) / len(HYPS)
    assert abs(corpus_bleu(HYPS, REFS) - sentence_mean) > 1e-3


def test_rouge_equals_rouge_score_mean_f1_times_100():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(ref, hyp) for hyp, ref in zip(HYPS, REFS)]
    got = rouge_f1(HYPS, REFS)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(d[key].fmeasure for d in direct) / len(direct)
        assert got[key] == pytest.approx(expected)


def test_rouge1_by_hand():
    # unigram overlap 3 of hyp 3 and ref 6: P = 1, R = 1/2, F1 = 2/3
    assert rouge_f1(["the cat sat"], ["the cat sat on the mat"])["rouge1"] == pytest.approx(200 / 3)


def test_stemming_matches_inflections():
    assert rouge_f1(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(100.0)


def test_identical_texts_score_100():
    metrics = generation_metrics(REFS, REFS)
    assert metrics.pop("bleu_tokenize") == "13a"
    assert metrics == pytest.approx({"bleu": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_per_example_scores_match_sentence_level_libraries():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = per_example_scores(HYPS, REFS)
    assert len(rows) == len(HYPS)
    for row, hyp, ref in zip(rows, HYPS, REFS):
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score)
        assert row["rougeL"] == pytest.approx(100 * scorer.score(ref, hyp)["rougeL"].fmeasure)
        assert all(0.0 <= value <= 100.0 and not math.isnan(value) for value in row.values())


def test_generation_metrics_equal_sacrebleu_and_rouge_score_called_directly():
    metrics = generation_metrics(HYPS, REFS)
    assert set(metrics) == {"bleu", "bleu_tokenize", "rouge1", "rouge2", "rougeL"}
    assert metrics.pop("bleu_tokenize") == "13a"
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)  # the library's defaults
    direct = [scorer.score(ref, hyp) for hyp, ref in zip(HYPS, REFS)]
    expected = {"bleu": sacrebleu.corpus_bleu(HYPS, [REFS]).score}
    expected.update({key: 100 * sum(d[key].fmeasure for d in direct) / len(direct) for key in ("rouge1", "rouge2",
                                                                                                  "rougeL")})
    assert metrics == pytest.approx(expected, abs=1e-9)
    assert 0 < metrics["bleu"] < 100 and 0 < metrics["rouge2"] < 100  # partly right: not a trivial 0 or 100


@pytest.mark.parametrize("fn", [corpus_bleu, rouge_f1, per_example_scores, generation_metrics])
def test_empty_and_mismatched_inputs_raise(fn):
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="pair one to one"):
        fn(["a b c"], ["a b c", "d e f"])
