"""Can this model train on packed rows? Asked of the model itself, once, before training.

Padding-free batches (`data.collate.CausalLMCollator(packing=True)`) rely on the model turning
restarting `position_ids` into a block-diagonal causal mask, as transformers' shared masking code
does for Llama, Qwen2, Gemma, GPT-2 and most current causal LMs. A model with its own attention
code (remote code, older architectures) may instead let the examples of a row attend to each other,
which would silently change what is learned; so we compare, on two short random sequences, the
logits of the packed row with those of each sequence alone.
"""

from __future__ import annotations

import warnings

import torch

from oloraplus.data.collate import CausalLMCollator, model_inputs


def supports_packing(model: torch.nn.Module, margin: float = 0.1) -> bool:
    """True when two sequences packed in one row give (nearly) the logits each gives alone.

    "Nearly" is measured against what attending across would change: the second sequence run right
    after the first in one causal row. Packed logits must be at least 1/margin times closer to the
    separate ones than that, which holds at any precision: in float32 they agree to ~1e-6, in bf16
    (different attention kernels round differently) to ~1e-2, while attention across moves logits by
    order one. Run once before training, in eval mode (no dropout).
    """
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    first, second = (torch.randint(1, vocab, (n,), generator=g).tolist() for n in (5, 4))
    items = [{"input_ids": ids, "labels": ids} for ids in (first, second)]
    packed = model_inputs(CausalLMCollator(pad_token_id=0, packing=True, pack_length=16)(items), device)
    packed.pop("labels")
    was_training = model.training
    model.eval()

    def logits(**inputs) -> torch.Tensor:
        return model(**inputs).logits[0].float()

    try:
        with torch.inference_mode():
            alone = torch.cat([logits(input_ids=torch.tensor([ids], device=device)) for ids in (first, second)])
            together = logits(**packed)  # one row, the longer sequence first (`pack_rows`): `first`
            across = logits(input_ids=torch.tensor([first + second], device=device))  # attending across
    except (TypeError, RuntimeError, ValueError, IndexError):
        return False
    finally:
        model.train(was_training)
    if together.shape != alone.shape:
        return False
    leak = (across[len(first):] - alone[len(first):]).abs().max()
    return bool((together - alone).abs().max() <= margin * leak)


def batch_collator(model: torch.nn.Module, pad_token_id: int, max_length: int, packing: bool = True,
                   name: str = "the model") -> CausalLMCollator:
    """The collator for training and eval: packed rows when asked for and the model supports them, else padded.

    A model that fails the probe trains on padded batches, with a warning: slower, never wrong.
    """
    packed = packing and supports_packing(model)
    if packing and not packed:
        warnings.warn(f"{name}: its attention does not keep packed examples apart; using padded batches "
                      "(--no-packing)", stacklevel=2)
    return CausalLMCollator(pad_token_id=pad_token_id, packing=packed, pack_length=max_length)
