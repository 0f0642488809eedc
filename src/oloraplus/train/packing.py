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


def supports_packing(model: torch.nn.Module, atol: float = 1e-3) -> bool:
    """True when two sequences packed in one row give the logits each gives alone (eval mode, no dropout).

    `atol` is well above bf16/fp32 summation noise (~1e-5 relative on these tiny inputs) and far below
    what cross-attention between the sequences changes (~1e-1 on a random model).
    """
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (5, 4)]
    items = [{"input_ids": ids, "labels": ids} for ids in rows]
    packed = model_inputs(CausalLMCollator(pad_token_id=0, packing=True, pack_length=16)(items))
    packed.pop("labels")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            alone = [model(input_ids=torch.tensor([ids], device=device)).logits[0].float() for ids in rows]
            together = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in packed.items()}).logits
    except (TypeError, RuntimeError, ValueError, IndexError):
        return False
    finally:
        model.train(was_training)
    together = together[0].float()
    # the collator puts the longer sequence first (first-fit decreasing)
    expected = torch.cat(alone, dim=0)
    return together.shape == expected.shape and bool(torch.allclose(together, expected, atol=atol, rtol=1e-3))


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
