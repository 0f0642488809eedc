"""OHoRA as a PEFT method ("OHORA"): config, layer and model, registered with PEFT when this module is imported.

A saved adapter is relative to the untouched base W0: it holds the trained factors (ohora_A, ohora_B) and the
initial ones (ohora_init_A, ohora_init_B), and a layer computes

    y = W0 x + s·(A ⊗ Bᵀ − A0 ⊗ B0ᵀ) x,

so `PeftModel.from_pretrained(untouched_base, path)` reproduces the trained model exactly. `attach_ohora` then
folds the initial term into the base (W_res = W0 − s·A0 ⊗ B0ᵀ, the paper's frozen residual), which saves one
Kronecker product per step; the layer remembers which adapters are folded and undoes that when they are off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils import register_peft_method
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.peft_types import PeftType
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.files import CONFIG_FILE
from oloraplus.adapters.ohora import OHORA_INITS, kron_materialised, kron_matvec, ohora_factors, r_high_for
from oloraplus.adapters.quantized import dense_weight, is_quantized, shift_quantized_
from oloraplus.adapters.targets import out_in_shape, resolve_target_modules
from oloraplus.config import check_dropout
from oloraplus.errors import AdapterError


def _add_peft_type(name: str) -> None:
    """Add a member to PEFT's `PeftType` enum: `register_peft_method` only accepts names the enum already has."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses to touch members
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)


_add_peft_type("OHORA")


@dataclass
class OHoRAConfig(PeftConfig):
    """What the user configures; written to adapter_config.json next to the saved factors."""

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (exact or '.'-suffix) or a regex of the Linear/Conv1D layers to adapt."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of layers never to adapt."}
    )
    scale: float = field(
        default=1.0,
        metadata={"help": "s in W_res x + s·(A_high ⊗ B_highᵀ) x (the paper's α); 1 keeps the QR factors' scale."},
    )
    ohora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the Kronecker path."})
    ohora_init: str = field(
        default="ranked",
        metadata={"help": "'ranked': R1 = R[I1, I1] (every ranked direction counts); 'paper': the literal "
                  "R1 = R[I1, :r_high], which can give a zero factor. See oloraplus.adapters.ohora."},
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A, B (and A0, B0) from the QR of W0. False: zero factors, a no-op that a loaded "
            "adapter overwrites (skips the QR when loading)."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Other modules to train and save in full (e.g. a new head)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.OHORA
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        number = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
        if not (number and math.isfinite(self.scale) and self.scale != 0):
            raise AdapterError(f"OHoRA scale {self.scale!r}: must be a finite non-zero number")
        check_dropout(self.ohora_dropout, AdapterError)
        if self.ohora_init not in OHORA_INITS:
            raise AdapterError(f"OHoRA init {self.ohora_init!r}: choose one of {', '.join(OHORA_INITS)}")


class OHoRALinear(nn.Module, BaseTunerLayer):
    """A Linear or GPT-2 Conv1D layer plus s·(A ⊗ Bᵀ) x computed by `kron_matvec` (never the m×n product)."""

    adapter_layer_names = ("ohora_A", "ohora_B")
    other_param_names = ("ohora_init_A", "ohora_init_B", "ohora_dropout", "ohora_scale", "ohora_folded")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: OHoRAConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ohora_A = nn.ParameterDict({})  # (m/r_high, r_high), trained at lr η
        self.ohora_B = nn.ParameterDict({})  # (n/r_high, r_high), trained at lr λη
        self.ohora_init_A = BufferDict({}, persistent=True)  # A0: saved, makes the adapter base-relative
        self.ohora_init_B = BufferDict({}, persistent=True)  # B0
        self.ohora_dropout = nn.ModuleDict({})
        self.ohora_scale: dict[str, float] = {}
        self.ohora_folded: dict[str, bool] = {}  # True: the stored weight is W_res (s·A0 ⊗ B0ᵀ taken out)
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        self.conv1d = isinstance(base, Conv1D)  # Conv1D stores its weight in×out
        self.out_features, self.in_features = out_in_shape(base)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: OHoRAConfig) -> None:
        base = self.get_base_layer()
        weight = dense_weight(base) if is_quantized(base) else base.weight  # a bitsandbytes base: deq(Q(W0))
        if config.init_weights:
            init = ohora_factors(weight.T if self.conv1d else weight, config.ohora_init)
            A, B = init.A_high, init.B_high
        else:
            r = r_high_for(self.out_features, self.in_features)
            A, B = torch.zeros(self.out_features // r, r), torch.zeros(self.in_features // r, r)
        A, B = A.to(weight.device, torch.float32), B.to(weight.device, torch.float32)
        self.ohora_A[adapter_name] = nn.Parameter(A.clone())
        self.ohora_B[adapter_name] = nn.Parameter(B.clone())
        self.ohora_init_A[adapter_name] = A.clone()
        self.ohora_init_B[adapter_name] = B.clone()
        p = config.ohora_dropout
        self.ohora_dropout[adapter_name] = nn.Dropout(p) if p > 0 else nn.Identity()
        self.ohora_scale[adapter_name] = float(config.scale)
        self.ohora_folded[adapter_name] = False
        self.set_adapter(self.active_adapters)

    def _kron(self, adapter: str, x: Tensor, initial: bool = False) -> Tensor:
        A, B = (self.ohora_init_A, self.ohora_init_B) if initial else (self.ohora_A, self.ohora_B)
        return kron_matvec(A[adapter], B[adapter], self._cast_input_dtype(x, A[adapter].dtype))

    def _restore_folded(self, result: Tensor, x: Tensor, skip: list[str]) -> Tensor:
        """Add back s·A0 ⊗ B0ᵀ x of folded adapters that are not contributing, so the base acts as W0."""
        for adapter, folded in self.ohora_folded.items():
            if folded and adapter not in skip:
                result = result + (self.ohora_scale[adapter] * self._kron(adapter, x, initial=True)).to(result.dtype)
        return result

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self._restore_folded(self.base_layer(x, *args, **kwargs), x, skip=[])
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self._restore_folded(result, x, skip=self.merged_adapters)
        active = [a for a in self.active_adapters if a in self.ohora_A]
        out = self._restore_folded(result, x, skip=active)
        for adapter in active:
            delta = self._kron(adapter, self.ohora_dropout[adapter](x))  # (A ⊗ Bᵀ) x
            if not self.ohora_folded[adapter]:
                delta = delta - self._kron(adapter, x, initial=True)  # − (A0 ⊗ B0ᵀ) x
            out = out + (self.ohora_scale[adapter] * delta).to(result.dtype)
        return out

    def get_delta_weight(self, adapter: str) -> Tensor:
        """What merging adds to the stored weight: s·(A ⊗ Bᵀ − A0 ⊗ B0ᵀ), or s·A ⊗ Bᵀ once A0 is folded."""
        K = kron_materialised(self.ohora_A[adapter], self.ohora_B[adapter])
        if not self.ohora_folded[adapter]:
            K = K - kron_materialised(self.ohora_init_A[adapter], self.ohora_init_B[adapter])
        delta = self.ohora_scale[adapter] * K  # (out, in)
        weight = self.get_base_layer().weight
        return (delta.T if self.conv1d else delta).to(weight.device, weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        weight = self.get_base_layer().weight
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.ohora_A:
                continue
            merged = weight.data + self.get_delta_weight(adapter)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights of OHoRA adapter '{adapter}'")
            weight.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            weight.data = weight.data - self.get_delta_weight(self.merged_adapters.pop())

    def fold_initial(self, adapter: str) -> None:
        """W ← W − s·A0 ⊗ B0ᵀ: the paper's frozen residual W_res; forward then skips the A0 ⊗ B0ᵀ product."""
        if self.merged or self.ohora_folded[adapter]:
            raise AdapterError(f"OHoRA adapter '{adapter}': fold it once, before merging")
        K0 = self.ohora_scale[adapter] * kron_materialised(self.ohora_init_A[adapter], self.ohora_init_B[adapter])
        base = self.get_base_layer()
        if is_quantized(base):  # Q(deq(Q(W0)) − s·A0 ⊗ B0ᵀ), its rounding recorded (adapters/quantized.py)
            shift_quantized_(base, K0)
            self.ohora_folded[adapter] = True
            return
        weight = base.weight
        with torch.no_grad():
            weight.sub_((K0.T if self.conv1d else K0).to(weight.device, weight.dtype))
        self.ohora_folded[adapter] = True

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return False  # A ⊗ Bᵀ has rank rank(A)·rank(B), not a fixed low rank

    def __repr__(self) -> str:
        return "ohora." + super().__repr__()


class OHoRAModel(BaseTuner):
    """Wraps a model: replaces each targeted Linear/Conv1D by an `OHoRALinear`."""

    prefix: str = "ohora_"
    tuner_layer_cls = OHoRALinear
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self, ohora_config, adapter_name, target, target_name, parent, current_key, **kwargs
    ) -> None:
        try:
            if isinstance(target, OHoRALinear):
                target.update_layer(adapter_name, ohora_config)
                return
            if not isinstance(target, (nn.Linear, Conv1D)):
                raise AdapterError(f"is a {type(target).__name__}; OHoRA adapts only Linear and Conv1D layers")
            new_module = OHoRALinear(target, adapter_name, ohora_config)
        except AdapterError as exc:
            raise AdapterError(f"layer '{current_key}': {exc}") from None
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter is not trained
        self._replace_module(parent, target_name, new_module, target)


if PeftType.OHORA not in PEFT_TYPE_TO_CONFIG_MAPPING:  # a module reload must not register twice
    register_peft_method(name="ohora", config_cls=OHoRAConfig, model_cls=OHoRAModel)


def ohora_layers(model: nn.Module) -> dict[str, OHoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, OHoRALinear)}


def fold_initial_(peft_model: PeftModel, adapter_name: str = "default") -> int:
    """Fold s·A0 ⊗ B0ᵀ into the base weight of every OHoRA layer (W_res); returns how many layers."""
    layers = [m for m in ohora_layers(peft_model).values() if adapter_name in m.ohora_A]
    for layer in layers:
        layer.fold_initial(adapter_name)
    return len(layers)


def attach_ohora(
    model: nn.Module,
    target_modules: list[str] | None,
    scale: float = 1.0,
    dropout: float = 0.0,
    fold: bool = True,
    init: str = "ranked",
) -> PeftModel:
    """Wrap `model` (in place) in an OHoRA adapter on the given (or default: all block linear) layers.

    With `fold`, the base weights become W_res = W0 − s·A0 ⊗ B0ᵀ (the paper's form, one Kronecker
    product per step); without it they stay W0 and each step also computes (A0 ⊗ B0ᵀ) x. Same model.
    """
    targets = resolve_target_modules(model, target_modules)
    config = OHoRAConfig(
        task_type="CAUSAL_LM", target_modules=targets, scale=scale, ohora_dropout=dropout, ohora_init=init
    )
    peft_model = get_peft_model(model, config)
    if fold:
        fold_initial_(peft_model, peft_model.active_adapter)
    return peft_model


def load_ohora(model: nn.Module, path: str | Path, is_trainable: bool = False) -> PeftModel:
    """Load a saved OHoRA adapter onto the untouched base, skipping the QR (the saved factors overwrite zeros).

    Plain `PeftModel.from_pretrained` gives the same model after importing this module; it just redoes the QR
    (one full QR per layer, whose result the saved A0, B0 then overwrite).
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{path}: no {CONFIG_FILE} (not a saved PEFT adapter)")
    config = PeftConfig.from_pretrained(str(path))
    if not isinstance(config, OHoRAConfig):
        peft_type = getattr(config.peft_type, "value", config.peft_type)
        raise AdapterError(f"{path}/{CONFIG_FILE}: peft_type is {peft_type}, not OHORA")
    config.init_weights = False
    return PeftModel.from_pretrained(model, str(path), config=config, is_trainable=is_trainable)
