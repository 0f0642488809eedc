"""ROUGE and BLEU on Chinese, Japanese and Russian; English scores unchanged from the libraries' defaults."""

import math

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


def bleu_by_hand(matches: list[int], totals: list[int], hyp_len: int, ref_len: int) -> float:
    """BLEU as sacrebleu defines it (Papineni et al. 2002, 'exp' smoothing): geometric mean of the n-gram
    precisions, each zero-match order k-th in line counted as 1 / (2^k · total), times the brevity penalty."""
    precisions, zeros = [], 0
    for match, total in zip(matches, totals):
        if match == 0:
            zeros += 1
            precisions.append(1 / (2 ** zeros * total))
        else:
            precisions.append(match / total)
    penalty = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * penalty * math.exp(sum(math.log(p) for p in precisions) / 4)


def test_chinese_bleu_and_rouge_by_hand():
    ref, hyp = "我爱北京", "我爱上海"
    # one token per character: 我 爱 北 京 / 我 爱 上 海. Unigrams 2/4 shared, bigrams 1/3 (我爱), tri- and 4-grams none
    expected_bleu = bleu_by_hand([2, 1, 0, 0], [4, 3, 2, 1], 4, 4)  # (1/2 · 1/3 · 1/4 · 1/4)^(1/4) = 31.95
    assert expected_bleu == pytest.approx(31.947, abs=1e-3)
    assert corpus_bleu([hyp], [ref]) == pytest.approx(expected_bleu)
    assert per_example_scores([hyp], [ref])[0]["bleu"] == pytest.approx(expected_bleu)
    # ROUGE-1 F1 = 2·(2/4)·(2/4)/(2/4 + 2/4) = 1/2; ROUGE-2 = 1/3; LCS 我爱 = 2 of 4: ROUGE-L = 1/2
    assert rouge_f1([hyp], [ref]) == pytest.approx({"rouge1": 50.0, "rouge2": 100 / 3, "rougeL": 50.0})


def test_russian_bleu_and_rouge_by_hand():
    ref, hyp = "кошка сидит на ковре", "Кошка сидела на ковре"
    # BLEU (13a, case-sensitive as sacrebleu's default): Кошка ≠ кошка, so unigrams 2/4 (на, ковре), bigrams 1/3
    # (на ковре), no tri- or 4-gram
    expected_bleu = bleu_by_hand([2, 1, 0, 0], [4, 3, 2, 1], 4, 4)
    assert corpus_bleu([hyp], [ref]) == pytest.approx(expected_bleu)
    # ROUGE lowercases (no stemming outside ASCII): кошка на ковре shared, сидит ≠ сидела.
    # ROUGE-1 = 3/4, ROUGE-2 = 1/3 (на ковре), ROUGE-L: LCS кошка на ковре = 3/4
    assert rouge_f1([hyp], [ref]) == pytest.approx({"rouge1": 75.0, "rouge2": 100 / 3, "rougeL": 75.0})


def test_a_shorter_cyrillic_answer_pays_the_brevity_penalty():
    ref, hyp = "москва столица россии и большой город", "москва столица россии"
    # every n-gram of the 3-word answer is in the reference: precisions 3/3, 2/2, 1/1, and it has no 4-gram, which
    # sentence BLEU leaves out (effective order 3); brevity penalty exp(1 − 6/3)
    bp = math.exp(1 - 6 / 3)
    assert per_example_scores([hyp], [ref])[0]["bleu"] == pytest.approx(100 * bp)
    # ROUGE: P = 1, R = 1/2: F1 = 2/3 for ROUGE-1 and -L; bigrams 2 of 2 and 2 of 5: F1 = 2·1·(2/5)/(1 + 2/5) = 4/7
    assert rouge_f1([hyp], [ref]) == pytest.approx({"rouge1": 200 / 3, "rouge2": 400 / 7, "rougeL": 200 / 3})
