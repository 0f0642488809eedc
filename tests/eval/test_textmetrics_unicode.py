"""ROUGE and BLEU on Chinese, Japanese and Russian; English scores unchanged from the libraries' defaults."""

import pytest
from rouge_score import rouge_scorer
import sacrebleu

from oloraplus.eval.textmetrics import (UnicodeTokenizer, bleu_tokenizer, corpus_bleu, generation_metrics,
                                        per_example_scores, rouge_f1)

ZH_RU = ["北京是中国的首都。", "Москва столица России"]
ENGLISH_HYPS = [
    "The cat sat on a mat.", "The capital of France is Paris.", "Water boils at 100 degrees at sea level.",
    "She runs quick to the train-station, don't you_know?", "Running, jumped; flies... 3.14 ok",
]
ENGLISH_REFS = [
    "The cat sat on the mat.", "Paris is the capital of France.",
    "Water boils at one hundred degrees Celsius at sea level.", "She was running quickly to the station.",
    "runner jumps fly 3 14 OK!",
]


def test_perfect_chinese_and_russian_answers_score_100():
    metrics = generation_metrics(ZH_RU, ZH_RU)
    assert metrics.pop("bleu_tokenize") == "zh"
    assert metrics == pytest.approx({"bleu": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    for row in per_example_scores(ZH_RU, ZH_RU):
        assert row == pytest.approx({"bleu": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})


def test_rouge_score_default_gives_zero_for_the_same_texts():
    """The bug this module fixes: rouge-score's own tokenizer sees no token in either text."""
    default = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    assert all(default.score(t, t)["rouge1"].fmeasure == 0.0 for t in ZH_RU)


def test_partly_right_chinese_answer_by_hand():
    ref, hyp = "北京是中国的首都", "上海是中国的城市"
    # 8 characters each, 4 shared (是中国的) in order: ROUGE-1 = ROUGE-L = 50;
    # bigrams: 3 shared (是中 中国 国的) of 7 on each side: 3/7
    got = rouge_f1([hyp], [ref])
    assert got["rouge1"] == pytest.approx(50.0)
    assert got["rougeL"] == pytest.approx(50.0)
    assert got["rouge2"] == pytest.approx(300 / 7)
    bleu = corpus_bleu([hyp], [ref])
    assert 0.0 < bleu < 100.0
    # independent reference: characters separated by hand, then sacrebleu's whitespace-only tokenizer
    spaced = sacrebleu.corpus_bleu([" ".join(hyp)], [[" ".join(ref)]], tokenize="none").score
    assert bleu == pytest.approx(spaced)


def test_partly_right_russian_answer():
    got = rouge_f1(["Москва большая столица"], ["Москва столица России"])
    # unigrams: 2 shared of 3 and 3: F1 = 2/3
    assert got["rouge1"] == pytest.approx(200 / 3)


def test_tokenizer_splits_cjk_and_keeps_words():
    tokens = UnicodeTokenizer().tokenize("東京はHello_World 123、Москва!")
    assert tokens == ["東", "京", "は", "hello", "world", "123", "москва"]


def test_english_rouge_equals_rouge_score_default():
    default = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for hyp, ref in zip(ENGLISH_HYPS, ENGLISH_REFS):
        assert UnicodeTokenizer().tokenize(hyp) == default._tokenizer.tokenize(hyp)
        expected = default.score(ref, hyp)
        got = per_example_scores([hyp], [ref])[0]
        for key in ("rouge1", "rouge2", "rougeL"):
            assert abs(got[key] - 100 * expected[key].fmeasure) < 1e-9


def test_english_bleu_uses_13a_and_equals_sacrebleu_default():
    assert bleu_tokenizer(ENGLISH_HYPS, ENGLISH_REFS) == "13a"
    assert corpus_bleu(ENGLISH_HYPS, ENGLISH_REFS) == pytest.approx(
        sacrebleu.corpus_bleu(ENGLISH_HYPS, [ENGLISH_REFS]).score, abs=1e-9)


def test_one_cjk_reference_switches_bleu_to_zh():
    assert bleu_tokenizer(["hello"], ["你好"]) == "zh"
    assert generation_metrics(["hello", "x"], ["hello", "你好"])["bleu_tokenize"] == "zh"
