"""The λ optimizer of LoRA+ / OLoRA+: AdamW where every B factor learns λ times faster than A.

LoRA+ (Hayou et al., 2024), eq. (η_B = λ η_A); OLoRA+ is the same rule on OLoRA-initialised factors,
with any λ > 0 (λ < 1 "refinement", λ > 1 "exploration").

Only the B factors move to λη. DoRA's magnitude vector and trained biases stay at η (no weight decay),
unlike PEFT's `create_loraplus_optimizer`, which puts every 1-D parameter at λη: λ is the ratio between
the two factors of ΔW = B·A, and the magnitude is not one of them (it rescales the columns of W + BA,
and DoRA trains it at the LoRA rate); moving it with λ would also make a λ sweep change the magnitude's
and the biases' rates, so λ would no longer be the only thing that differs. At λ = 1 both agree.
"""

from __future__ import annotations

import torch

from oloraplus.adapters import registry
from oloraplus.config import check_ratio

NO_DECAY_MARKERS = ("bias", "norm", "lora_magnitude_vector")


def classify(name: str) -> str:
    """'A', 'B', 'no_decay' or 'other' for a parameter name; A and B by the markers of the registered methods."""
    if any(marker in name for marker in registry.a_markers()):
        return "A"
    if any(marker in name for marker in registry.b_markers()):
        return "B"
    if any(marker in name.lower() for marker in NO_DECAY_MARKERS):
        return "no_decay"
    return "other"


def ratio_param_groups(model: torch.nn.Module, lr: float, ratio: float, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups named 'A', 'B', 'other', 'no_decay': A at η, B at λη, other trainables at η; no decay
    on biases/norms."""
    ratio = check_ratio(ratio)
    buckets: dict[str, list[tuple[str, torch.nn.Parameter]]] = {"A": [], "B": [], "other": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets[classify(name)].append((name, param))
    settings = {
        "A": (lr, weight_decay),
        "B": (lr * ratio, weight_decay),  # η_B = λ η_A
        "other": (lr, weight_decay),
        "no_decay": (lr, 0.0),
    }
    return [
        {"name": key, "params": [p for _, p in items], "lr": settings[key][0], "weight_decay": settings[key][1]}
        for key, items in buckets.items()
        if items
    ]


def build_optimizer(
    model: torch.nn.Module, lr: float, ratio: float, weight_decay: float = 0.0, **adamw_kwargs
) -> torch.optim.AdamW:
    """The AdamW that training runs (`RatioOptimizerMixin.create_optimizer`); fused into one kernel per step on CUDA."""
    groups = ratio_param_groups(model, lr, ratio, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if "fused" not in adamw_kwargs and all(p.is_cuda for g in groups for p in g["params"]):
        adamw_kwargs["fused"] = True  # one launch for every parameter instead of several per tensor
    return torch.optim.AdamW(groups, lr=lr, **adamw_kwargs)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each named group, e.g. {'A': η_t, 'B': λη_t}: what the next optimizer step uses."""
    return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
