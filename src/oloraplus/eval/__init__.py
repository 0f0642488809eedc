"""Evaluation building blocks: textmetrics (BLEU/ROUGE), generate (greedy batched decoding),
loss (token-weighted held-out NLL), diagnostics (refinement vs exploration of adapter factors)."""
