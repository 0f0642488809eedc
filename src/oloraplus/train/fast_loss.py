"""Response-only causal-LM loss: the output head runs only at positions whose next token is trained.

Prompt and padding tokens are labelled -100, yet the standard loss computes the V-wide logits
(V = 49152 for SmolLM2) at every position and then discards the masked ones. transformers'
`logits_to_keep` accepts a boolean (batch, seq) mask and applies the head to `hidden_states[mask]`
only; we pass the positions that ForCausalLMLoss scores after its shift. Calling the model itself
(not its backbone and head separately) keeps DDP's gradient hooks, PEFT's forward hooks and any
model-specific logit scaling or soft-capping.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from oloraplus.errors import ModelError

IGNORE_INDEX = -100  # the label torch's cross-entropy (and so every HF causal LM) skips


def next_token_targets(labels: Tensor) -> Tensor:
    """(batch, seq) target of each position: labels shifted left by one, -100 at the last position.

    Position t predicts token t+1, exactly as ForCausalLMLoss pads and shifts its labels.
    """
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def scored_nll(model: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[Tensor, int]:
    """(Σ NLL over the scored positions, their count), the output head applied only at those positions.

    `inputs` holds `labels` (or pre-shifted `shift_labels`, as padding-free collators give) and the
    model's inputs. Shared by training (`response_only_loss`) and evaluation (`eval.loss`).
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels", None)
    shift_labels = inputs.pop("shift_labels", None)
    if shift_labels is None and labels is None:
        raise ValueError("response_only_loss needs 'labels' (or 'shift_labels') in the inputs")
    targets = shift_labels if shift_labels is not None else next_token_targets(labels)
    keep = targets != IGNORE_INDEX  # (batch, seq): the positions the loss scores
    logits = model(**inputs, logits_to_keep=keep).logits  # (n_kept, V)
    n_kept = int(keep.sum())
    if logits.dim() != 2 or logits.shape[0] != n_kept:
        raise ModelError(f"{type(model).__name__}: returned logits of shape {tuple(logits.shape)} for a boolean "
                         f"logits_to_keep mask of {n_kept} positions; this model needs the standard loss")
    nll = F.cross_entropy(logits.float(), targets[keep].to(logits.device), reduction="sum")  # float: as HF upcasts
    return nll, n_kept


def response_only_loss(model: torch.nn.Module, inputs: Mapping[str, Any],
                       num_items_in_batch: Tensor | int | None = None) -> Tensor:
    """Σ NLL of the trained tokens / num_items_in_batch, or their mean when it is None: HF's loss, cheaper.

    The value and the gradients equal `model(**inputs).loss` with the same `num_items_in_batch`
    (the Trainer's count for gradient accumulation).
    """
    nll, n_kept = scored_nll(model, inputs)
    if num_items_in_batch is None:
        return nll / n_kept  # the mean of the label tokens (nan when there are none, as in HF)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(nll.device)
    return nll / num_items_in_batch


def supports_response_only_loss(model: torch.nn.Module) -> bool:
    """Whether `model` honours a boolean `logits_to_keep` mask, from one 2-token forward.

    Most transformers causal LMs do; a few (and remote-code models) take only an int or ignore it.
    Run once before training: the probe runs in eval mode, so dropout draws no random numbers.
    """
    device = next(model.parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    keep = torch.tensor([[True, False]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep).logits
    except (TypeError, RuntimeError, ValueError, IndexError):
        return False
    finally:
        model.train(was_training)
    return logits.dim() == 2 and logits.shape[0] == 1
