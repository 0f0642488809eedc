"""Response-only causal-LM loss: the output head runs only at positions whose next token is trained.

Prompt and padding tokens are labelled -100, yet the standard loss computes the V-wide logits
(V = 49152 for SmolLM2) at every position and then discards the masked ones. transformers'
`logits_to_keep` accepts a (rows, K) tensor of positions and applies the head there only; we pass
the positions that ForCausalLMLoss scores after its shift, computed by the collator on the CPU.
Calling the model itself (not its backbone and head separately) keeps DDP's gradient hooks, PEFT's
forward hooks and any model-specific logit scaling or soft-capping.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from oloraplus.data.collate import REAL_TOKENS, SCORED, next_token_targets, scored_positions
from oloraplus.data.tokenize import IGNORE_INDEX
from oloraplus.errors import ModelError


def scored_nll(model: torch.nn.Module, inputs: Mapping[str, Any], exact: bool | None = None
               ) -> tuple[Tensor, int | Tensor]:
    """(Σ NLL over the scored positions, their count), the output head applied only at those positions.

    `inputs` holds the model's inputs and `labels` (or pre-shifted `shift_labels`), and, from
    `data.collate.CausalLMCollator`, the host-computed `scored` positions: with those the step
    launches no host sync (a boolean mask would make the GPU report its count first). `exact`
    (default: on a CPU) uses the boolean mask instead, so the head runs at no padding position.
    Shared by training (`response_only_loss`) and evaluation (`eval.loss`).
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels", None)
    shift_labels = inputs.pop("shift_labels", None)
    scored = inputs.pop(SCORED, None)
    inputs.pop(REAL_TOKENS, None)
    if shift_labels is None and labels is None:
        raise ValueError("response_only_loss needs 'labels' (or 'shift_labels') in the inputs")
    device = inputs["input_ids"].device
    exact = device.type == "cpu" if exact is None else exact
    if exact or scored is None or shift_labels is not None:  # derive the targets here
        targets = (shift_labels if shift_labels is not None else next_token_targets(labels)).to(device)
    if exact:  # a boolean mask: the head sees exactly the scored positions (its count syncs, free on a CPU)
        index = targets != IGNORE_INDEX
        kept = targets[index]
        count = int(index.sum())
        expected: tuple = (count,)
    else:  # (rows, K) positions from the host: no sync, at the cost of padding rows to the widest
        if scored is None or shift_labels is not None:
            scored = scored_positions(targets.cpu())
        index = scored["index"].to(device, non_blocking=True)
        kept = scored["targets"].to(device, non_blocking=True)
        count = scored["count"]
        expected = tuple(index.shape)
    logits = model(**inputs, logits_to_keep=index).logits  # (n, V) or (rows, K, V)
    if tuple(logits.shape[:-1]) != expected:
        raise ModelError(f"{type(model).__name__}: returned logits of shape {tuple(logits.shape)} for "
                         f"logits_to_keep positions of shape {tuple(index.shape)}; this model needs the standard loss")
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), kept.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="sum")  # float: as HF upcasts
    return nll, count


def response_only_loss(model: torch.nn.Module, inputs: Mapping[str, Any],
                       num_items_in_batch: Tensor | int | None = None, exact: bool | None = None) -> Tensor:
    """Σ NLL of the trained tokens / num_items_in_batch, or their mean when it is None: HF's loss, cheaper.

    The value and the gradients equal `model(**inputs).loss` with the same `num_items_in_batch`
    (the Trainer's count for gradient accumulation).
    """
    nll, n_kept = scored_nll(model, inputs, exact)
    if num_items_in_batch is None:
        return nll / n_kept  # the mean of the label tokens (nan when there are none, as in HF)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(nll.device)
    return nll / num_items_in_batch


def supports_response_only_loss(model: torch.nn.Module) -> bool:
    """Whether `model` honours `logits_to_keep` as a boolean mask and as (rows, K) positions, from 2-token forwards.

    Most transformers causal LMs do; a few (and remote-code models) take only an int or ignore it.
    Run once before training: the probe runs in eval mode, so dropout draws no random numbers.
    """
    device = next(model.parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    mask = torch.tensor([[True, False]], device=device)
    positions = torch.tensor([[0]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            by_mask = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=mask).logits
            by_position = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=positions).logits
    except (TypeError, RuntimeError, ValueError, IndexError):
        return False
    finally:
        model.train(was_training)
    return tuple(by_mask.shape[:-1]) == (1,) and tuple(by_position.shape[:-1]) == (1, 1)
