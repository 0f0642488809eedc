"""BLEU and ROUGE for generated responses, computed by sacrebleu and rouge-score.

Every score is on a 0-100 scale: sacrebleu reports BLEU in points, and the ROUGE F1 values
(0-1 from rouge-score) are multiplied by 100 so that one table can hold both.

Both libraries' defaults are English-only: rouge-score drops every character outside [a-z0-9]
(a perfect Chinese or Russian answer scores 0) and sacrebleu's 13a tokenizer keeps a Chinese
sentence as one token. So ROUGE uses `UnicodeTokenizer` (identical to rouge-score's default on
ASCII text) and BLEU switches to sacrebleu's `zh` tokenizer when any text contains CJK.
"""

from __future__ import annotations

import re

from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers
import sacrebleu

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# Han ideographs, kana, radicals and strokes: scripts written without spaces between words, so
# each character is one token (as sacrebleu's `zh` tokenizer does). Hangul is space-separated.
_CJK = ("\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
        "\uf900-\ufaff\U00020000-\U0002fa1f")
_CJK_RE = re.compile(f"[{_CJK}]")
_WORD_RE = re.compile(r"[^\W_]+")  # Unicode letters and digits; `_` splits words, as in rouge-score


class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's tokenizer for every script: lowercase, Unicode word tokens, one token per CJK
    character; ASCII words longer than 3 letters are Porter-stemmed exactly as rouge-score does."""

    def __init__(self) -> None:
        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        words = _WORD_RE.findall(_CJK_RE.sub(r" \g<0> ", text.lower()))
        return [self._stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in words]


def has_cjk(texts: list[str]) -> bool:
    return any(_CJK_RE.search(t) for t in texts)


def bleu_tokenizer(hypotheses: list[str], references: list[str]) -> str:
    """sacrebleu's `zh` (one token per CJK character, 13a elsewhere) when any text has CJK, else 13a."""
    return "zh" if has_cjk(hypotheses) or has_cjk(references) else "13a"


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    """Scores over mismatched or empty lists are silently wrong, so refuse them."""
    if len(hypotheses) == 0:
        raise ValueError("no hypotheses to score: the list of generated texts is empty")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair one to one"
        )


def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeTokenizer())


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (exp smoothing; tokenizer from `bleu_tokenizer`), in points 0-100."""
    _check_pairs(hypotheses, references)
    tokenize = bleu_tokenizer(hypotheses, references)
    return float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score)


def rouge_f1(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over examples (Porter stemming), times 100 to match BLEU's scale."""
    _check_pairs(hypotheses, references)
    scorer = _scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)  # rouge-score takes (target, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(hypotheses) for key, total in totals.items()}


def per_example_scores(hypotheses: list[str], references: list[str]) -> list[dict[str, float]]:
    """Sentence BLEU (exp smoothing, effective order, the corpus's tokenizer) and ROUGE F1 per example.

    All 0-100; one dict per example so that bootstrap confidence intervals can resample them.
    """
    _check_pairs(hypotheses, references)
    scorer = _scorer()
    tokenize = bleu_tokenizer(hypotheses, references)
    rows = []
    for hyp, ref in zip(hypotheses, references):
        rouge = scorer.score(ref, hyp)
        row = {"bleu": float(sacrebleu.sentence_bleu(hyp, [ref], tokenize=tokenize).score)}
        row.update({key: 100.0 * rouge[key].fmeasure for key in ROUGE_TYPES})
        rows.append(row)
    return rows


def generation_metrics(hyps: list[str], refs: list[str]) -> dict[str, float | str]:
    """The headline numbers of a generation eval: corpus BLEU and mean ROUGE-1/2/L F1, all 0-100,
    and `bleu_tokenize`, the sacrebleu tokenizer used (BLEU is comparable only under the same one)."""
    metrics: dict[str, float | str] = {"bleu": corpus_bleu(hyps, refs), "bleu_tokenize": bleu_tokenizer(hyps, refs)}
    metrics.update(rouge_f1(hyps, refs))
    return metrics
