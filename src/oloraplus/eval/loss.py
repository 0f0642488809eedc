"""Held-out loss and perplexity over response tokens, token-weighted, optionally across ranks.

The mean of per-batch means would weight a token in a short batch more than one in a long batch,
so the result would change with batch size and with the number of processes. We sum the NLL of
every label token and divide once by the number of label tokens. Where the model supports it the
output head runs only at the scored positions (`eval.fast_loss`): the V-wide logits of the prompt
and padding positions were the largest allocation of an evaluation.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from oloraplus import rundir
from oloraplus.console import track
from oloraplus.data.collate import SCORED, model_inputs, next_token_targets
from oloraplus.data.tokenize import IGNORE_INDEX
from oloraplus.errors import DataError
from oloraplus.eval.fast_loss import scored_nll, supports_response_only_loss

_COLUMNS = ("input_ids", "labels", "lengths")


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _row(dataset, index: int) -> dict:
    """Only the token columns: a collator should not see text or metadata columns."""
    row = dataset[index]
    return {key: row[key] for key in _COLUMNS if key in row}


def _rows_per_rank(model, n_rows: int, own_rows: int, world: int) -> int:
    """Rows this rank walks through: its own, or under FSDP the most any rank has, since every forward of a
    sharded model all-gathers with the other ranks (a rank that stopped early would leave them waiting)."""
    from torch.distributed.fsdp import FSDPModule

    if world > 1 and any(isinstance(m, FSDPModule) for m in model.modules()):
        return math.ceil(n_rows / world)
    return own_rows


def _nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of next-token predictions from full logits, and the number of label tokens.

    The fallback for models that ignore a boolean `logits_to_keep`; the shift is `scored_nll`'s.
    """
    targets = next_token_targets(labels)  # position t predicts token t+1
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="sum")
    return nll, (targets != IGNORE_INDEX).sum()


def evaluate_loss(
    model, dataset: Sequence[dict], collator: Callable[[list[dict]], dict], batch_size: int = 8
) -> dict[str, float]:
    """Token-weighted mean NLL of the response tokens, its perplexity and the token count.

    Under torch.distributed each rank takes rows rank, rank+world, ... and the sums are
    all-reduced, so every rank returns the same numbers as a single process would.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world = _rank_and_world()
    device = next(model.parameters()).device
    indices = list(range(rank, len(dataset), world))
    nll_total = torch.zeros((), dtype=torch.float64, device=device)
    tokens_total = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    response_only = supports_response_only_loss(model)
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, _rows_per_rank(model, len(dataset), len(indices), world), batch_size)
            for start in track(starts, len(starts), f"evaluating {len(dataset)} examples"):
                rows = indices[start : start + batch_size]
                if not rows:  # FSDP: this rank's rows ran out, but its forward must join the others' all-gathers
                    model(**model_inputs(collator([_row(dataset, 0)]), device))
                    continue
                batch = collator([_row(dataset, i) for i in rows])
                inputs = model_inputs(batch, device)  # padded or packed rows
                if response_only:
                    nll, count = scored_nll(model, {**inputs, SCORED: batch.get(SCORED)})
                else:
                    labels = inputs.pop("labels")
                    nll, count = _nll_sum(model(**inputs).logits, labels)
                nll_total += nll.double()
                tokens_total += count  # a host int (scored) or a device tensor: no sync either way
    finally:
        model.train(was_training)
    if world > 1:
        dist.all_reduce(nll_total)
        dist.all_reduce(tokens_total)
    n_tokens = int(tokens_total.item())
    if n_tokens == 0:
        raise DataError("evaluation set has no response tokens: every label is -100 (or the set is empty)")
    eval_loss = float(nll_total.item()) / n_tokens
    perplexity = math.exp(eval_loss) if eval_loss < 700 else math.inf  # exp overflows a float past ~709
    return {"eval_loss": eval_loss, "perplexity": perplexity, "eval_tokens": n_tokens}


def validation_metrics(scores: dict[str, float]) -> dict[str, float]:
    """`evaluate_loss` on the validation split, renamed (val_eval_loss, ...) so it never passes for the test loss."""
    return {rundir.VALIDATION_PREFIX + key: value for key, value in scores.items()}
