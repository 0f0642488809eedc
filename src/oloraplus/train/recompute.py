"""Activation checkpointing (`--gradient-checkpointing`): keep each decoder layer's input, recompute the rest.

transformers' non-reentrant implementation (`torch.utils.checkpoint(use_reentrant=False)`) on the layers the
model marks as checkpointable. Non-reentrant, because the reentrant variant drops the gradients of the
parameters inside a checkpointed layer unless the layer's *input* requires grad, which the frozen embedding
never gives; transformers also makes the embedding output require grad (PEFT's `enable_input_require_grads`),
for models whose own code still takes the reentrant path. RNG state is replayed, so adapter dropout draws the
same mask in the recompute: loss and gradients equal a run without checkpointing
(tests/train/test_checkpointing.py). Memory: bench/memory_results.md and `oloraplus plan`.
"""

from __future__ import annotations

import torch

from oloraplus.errors import ModelError


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint every decoder layer of `model` (a PeftModel or a plain causal LM), in place."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ModelError(f"--gradient-checkpointing: {type(base).__name__} does not support activation "
                         "checkpointing; drop the flag")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False  # a KV cache is useless in training, and transformers warns about it
