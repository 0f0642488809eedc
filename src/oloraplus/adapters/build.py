"""Wrap a causal LM in a PEFT adapter initialised by one of the supported methods.

lora: B = 0 (PEFT default) · olora: B, A = Q_r, R_r of W (base shifted) · pissa: top-r SVD of W
(base shifted, float32 factors) · dora: LoRA plus a learned magnitude vector (PEFT) · hira: ΔW = W ⊙ (BA)
(PEFT) · ohora: QR-ranked Kronecker factors, m + n parameters per layer (our PEFT method).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.olora import LoraFactors, apply_olora_
from oloraplus.adapters.pissa import apply_pissa_
from oloraplus.adapters.targets import out_in_shape, resolve_target_modules, targeted_layers
from oloraplus.config import METHODS  # one list of methods for the CLI and the library
from oloraplus.errors import AdapterError


@dataclass
class AdapterSpec:
    method: str
    rank: int = 32
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None
    ohora_init: str = "ranked"  # OHoRA only: 'ranked' or 'paper' (adapters/ohora.py)


def _validate(spec: AdapterSpec) -> None:
    if spec.method not in METHODS:
        raise AdapterError(f"--method {spec.method!r}: unknown; choose one of {', '.join(METHODS)}")
    if isinstance(spec.rank, bool) or not isinstance(spec.rank, int) or spec.rank <= 0:
        raise AdapterError(f"--rank {spec.rank}: must be a positive integer")
    if not spec.alpha > 0:
        raise AdapterError(f"--alpha {spec.alpha}: must be positive")
    if not 0.0 <= spec.dropout < 1.0:
        raise AdapterError(f"--dropout {spec.dropout}: must be in [0, 1)")


def _check_ranks(layers: dict[str, torch.nn.Module], rank: int) -> None:
    for name, layer in layers.items():
        out_features, in_features = out_in_shape(layer)
        if rank > min(out_features, in_features):
            raise AdapterError(
                f"--rank {rank}: exceeds min(out, in)={min(out_features, in_features)} of layer '{name}' "
                f"(out×in {out_features}×{in_features})"
            )


def attach_adapter(model: torch.nn.Module, spec: AdapterSpec) -> tuple[PeftModel, dict[str, LoraFactors]]:
    """Wrap `model` (in place) and return it with the initial factors of base-modifying inits (else {}).

    The random draws (LoRA's A) come from the CPU generator re-seeded with `torch.initial_seed()`
    inside a fork of its state, so the same `torch.manual_seed` gives the same adapter whatever
    was drawn before, and the training RNG stream that follows is the same for every method.
    """
    _validate(spec)
    targets = resolve_target_modules(model, spec.target_modules)
    layers = targeted_layers(model, targets)
    if spec.method == "ohora":  # no rank: r_high follows from each layer's shape; s = α/r as for LoRA
        from oloraplus.adapters.ohora_peft import attach_ohora

        scale = spec.alpha / spec.rank
        return attach_ohora(model, targets, scale=scale, dropout=spec.dropout, init=spec.ohora_init), {}
    _check_ranks(layers, spec.rank)
    if spec.method == "hira":
        from oloraplus.adapters.hira import attach_hira

        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(torch.initial_seed())
            return attach_hira(model, spec.rank, targets, spec.dropout), {}
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        init_lora_weights=True,  # OLoRA/PiSSA factors are set below, in float32
        use_dora=spec.method == "dora",
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in layers.values()),
    )
    # PEFT draws A on the CPU before moving it to the base's device: forking the CPU generator suffices
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.default_generator.manual_seed(torch.initial_seed())
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    adapter_name = peft_model.active_adapter
    if spec.method == "olora":
        initial = apply_olora_(peft_model, adapter_name)
    elif spec.method == "pissa":
        initial = apply_pissa_(peft_model, adapter_name)
    else:
        initial = {}
    return peft_model, initial
