"""OLoRA+ from your own script: attach an adapter, build the λ optimizer, save and load base-relative adapters.

A few verbs, as PEFT has `get_peft_model` / `save_pretrained` / `PeftModel.from_pretrained`, re-exported lazily from
`oloraplus` (so `import oloraplus` stays cheap):

    model = oloraplus.add_adapter(model, "olora", rank=16, alpha=16)           # W − s·B0·A0 + s·B·A
    optimizer = oloraplus.build_ratio_optimizer(model, lr=3e-4, ratio=4.0)   # B at λη
    ...  # any training loop
    oloraplus.save_adapter(model, "my-adapter")   # loads onto the untouched base with PeftModel.from_pretrained

OLoRA and PiSSA shift the base weights at init, so their raw factors are wrong on the base a user loads;
`add_adapter` keeps what saving needs on the model (the initial factors B0, A0 and the base's fingerprint) and
`save_adapter` writes the exact base-relative rank-2r LoRA (`adapters/export.py`), as `oloraplus train` does.
Bad input raises the same one-line `oloraplus.errors` messages as the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from oloraplus.adapters import export
from oloraplus.adapters.build import AdapterSpec, Calibration, attach_adapter
from oloraplus.adapters.olora import LoraFactors
from oloraplus.config import check_method
from oloraplus.errors import AdapterError
from oloraplus.models import base_fingerprint
from oloraplus.optim.ratio import build_optimizer, ratio_param_groups

__all__ = ["AdapterRecord", "add_adapter", "adapter_record", "build_ratio_optimizer", "load_adapter",
           "ratio_param_groups", "save_adapter"]

RECORD_ATTRIBUTE = "oloraplus_adapter"  # where add_adapter keeps the AdapterRecord on the PeftModel


@dataclass(frozen=True)
class AdapterRecord:
    """What saving needs to know about an adapter that `add_adapter` attached."""

    method: str
    rank: int
    alpha: float
    base_fingerprint: str  # of the untouched base, taken before the init shifted it
    initial_factors: dict[str, LoraFactors]  # B0, A0 per layer of a base-shifting init (OLoRA, PiSSA); else {}

    def metadata(self) -> dict:
        """oloraplus_adapter.json: `load_adapter` refuses another base by the fingerprint."""
        return {"base_fingerprint": self.base_fingerprint, "method": self.method, "rank": self.rank,
                "alpha": self.alpha}


def add_adapter(model: torch.nn.Module, method: str = "olora", *, rank: int = 32, alpha: float = 16.0,
                dropout: float = 0.0, target_modules: list[str] | None = None,
                calibration: Calibration | None = None, ohora_init: str = "ranked") -> PeftModel:
    """Wrap `model` (in place) in a PEFT adapter of a registered method, initialised as `oloraplus train` does.

    `target_modules`: default every linear layer of the transformer blocks. `calibration`: training batches
    (dicts of model inputs, e.g. a DataLoader) for a data-driven init such as EVA; the others ignore it.
    The same `torch.manual_seed` gives the same adapter. Example::

        model = add_adapter(AutoModelForCausalLM.from_pretrained(path), "olora", rank=16, alpha=16)
    """
    check_method(method)
    fingerprint = base_fingerprint(model)  # before OLoRA/PiSSA move W to W − s·B0·A0
    spec = AdapterSpec(method=method, rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules,
                       ohora_init=ohora_init)
    peft_model, initial = attach_adapter(model, spec, calibration)
    setattr(peft_model, RECORD_ATTRIBUTE, AdapterRecord(method, rank, alpha, fingerprint, initial))
    return peft_model


def adapter_record(model: torch.nn.Module) -> AdapterRecord | None:
    """The record `add_adapter` left on `model` (also through DDP/accelerate wrappers); None for other models."""
    return getattr(_peft_model(model), RECORD_ATTRIBUTE, None)


def build_ratio_optimizer(model: torch.nn.Module, lr: float, ratio: float, weight_decay: float = 0.0,
                          **adamw_kwargs) -> torch.optim.AdamW:
    """AdamW with every A factor at `lr` (η) and every B factor at λη (`ratio` = λ), as `oloraplus train` builds.

    Bring your own optimizer class with `ratio_param_groups(model, lr, ratio)` instead.
    """
    return build_optimizer(model, lr, ratio, weight_decay, **adamw_kwargs)


def save_adapter(model: torch.nn.Module, path: str | os.PathLike,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a PEFT adapter directory that reproduces `model` on the untouched base (`PeftModel.from_pretrained`).

    An OLoRA/PiSSA adapter is written as the base-relative LoRA of rank 2r; a model not built by `add_adapter`
    saves as PEFT would, and one with a base-shifting init is refused (its B0, A0 are unknown).
    `state_dict`: the adapter's tensors when the model's own are sharded (FSDP).
    """
    peft_model = _peft_model(model)
    if peft_model is None:
        raise AdapterError(f"save adapter {path}: {type(model).__name__} has no adapter (attach one with add_adapter)")
    record = adapter_record(peft_model)
    return export.save_adapter(peft_model, path, record.initial_factors if record else {},
                               extra_metadata=record.metadata() if record else None, state_dict=state_dict)


def load_adapter(base_model: torch.nn.Module, path: str | os.PathLike) -> PeftModel:
    """`base_model` (untouched, modified in place) with the saved adapter at `path`, for inference.

    Refuses, in one line, an adapter whose recorded base fingerprint is not `base_model`'s. Any PEFT LoRA directory
    loads; `PeftModel.from_pretrained(base_model, path)` gives the same model, unchecked.
    """
    from oloraplus.adapters.adapter_dir import adapter_source, check_base

    name = getattr(base_model, "name_or_path", None) or type(base_model).__name__
    source = adapter_source(path, model=name)  # a run or any adapter directory; the base is the one given here
    check_base(base_model, source, base_fingerprint(base_model))  # its recorded fingerprint, every layer's shape
    return export.load_adapter(base_model, source.path)


def _peft_model(model: torch.nn.Module) -> PeftModel | None:
    """The PeftModel inside DDP/accelerate wrappers (their `.module`), or None."""
    while not isinstance(model, PeftModel) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model if isinstance(model, PeftModel) else None
