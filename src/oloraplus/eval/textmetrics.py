"""BLEU and ROUGE for generated responses, computed by sacrebleu and rouge-score.

Every score is on a 0-100 scale: sacrebleu reports BLEU in points, and the ROUGE F1 values
(0-1 from rouge-score) are multiplied by 100 so that one table can hold both.
"""

from __future__ import annotations

from rouge_score import rouge_scorer
import sacrebleu

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    """Scores over mismatched or empty lists are silently wrong, so refuse them."""
    if len(hypotheses) == 0:
        raise ValueError("no hypotheses to score: the list of generated texts is empty")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair one to one"
        )


def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU with sacrebleu's defaults (13a tokenizer, exp smoothing), in points 0-100."""
    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


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
    """Sentence BLEU (sacrebleu defaults: exp smoothing, effective order) and ROUGE F1 per example.

    All 0-100; one dict per example so that bootstrap confidence intervals can resample them.
    """
    _check_pairs(hypotheses, references)
    scorer = _scorer()
    rows = []
    for hyp, ref in zip(hypotheses, references):
        rouge = scorer.score(ref, hyp)
        row = {"bleu": float(sacrebleu.sentence_bleu(hyp, [ref]).score)}
        row.update({key: 100.0 * rouge[key].fmeasure for key in ROUGE_TYPES})
        rows.append(row)
    return rows


def generation_metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """The headline numbers of a generation eval: corpus BLEU and mean ROUGE-1/2/L F1, all 0-100."""
    metrics = {"bleu": corpus_bleu(hyps, refs)}
    metrics.update(rouge_f1(hyps, refs))
    return metrics
