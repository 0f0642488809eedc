"""HiRA baseline (Huang et al., ICLR 2025): ΔW = W0 ⊙ (B A), served by PEFT's own `peft.tuners.hira`.

The Hadamard product with W0 makes the update high-rank while only r·(m + n) parameters train
(hira_A: r×in, hira_B: out×r, so the λ optimizer finds them by name); B starts at 0, so the model
starts unchanged. We only validate the options and set `fan_in_fan_out` for GPT-2's Conv1D.
"""

from __future__ import annotations

from peft import HiraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.targets import resolve_target_modules, targeted_layers
from oloraplus.config import check_dropout, check_rank
from oloraplus.errors import AdapterError


def hira_config(
    rank: int, target_modules: list[str], dropout: float = 0.0, fan_in_fan_out: bool = False
) -> HiraConfig:
    """A causal-LM HiraConfig; `fan_in_fan_out=True` when the targets are Conv1D (weights stored in×out)."""
    check_rank(rank, AdapterError)
    if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
        raise AdapterError(f"--target-modules {target_modules!r}: give at least one module name")
    check_dropout(dropout, AdapterError)
    return HiraConfig(task_type="CAUSAL_LM", r=rank, target_modules=list(target_modules), hira_dropout=dropout,
                      fan_in_fan_out=fan_in_fan_out)


def attach_hira(
    model: nn.Module, rank: int, target_modules: list[str] | None = None, dropout: float = 0.0
) -> PeftModel:
    """Wrap `model` (in place) in a HiRA adapter on the given (or default: all block linear) layers."""
    targets = resolve_target_modules(model, target_modules)
    conv1d = any(isinstance(m, Conv1D) for m in targeted_layers(model, targets).values())
    return get_peft_model(model, hira_config(rank, targets, dropout, fan_in_fan_out=conv1d))
