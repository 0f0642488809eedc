"""EVA (Paischer et al. 2024, "Explained Variance Adaptation"): A = the top-r right singular vectors of each layer's
inputs on training batches, B = 0; PEFT's `initialize_lora_eva_weights`, fed the run's training batches.

The whole method is this file: the record below and its attach function. The base is untouched (B = 0, so
W + s·B·A = W at init), hence shifts_base=False, and the saved adapter is a plain base-relative LoRA that sums
with others (composable). ρ = 1: every layer keeps rank r, the same trainable parameters as LoRA at --rank
(PEFT's default ρ = 2 moves rank between layers). Under torchrun every process computes the same SVDs on the
same batches (the calibration loader is seeded; nothing is gathered), so all processes start identical.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from oloraplus.adapters.registry import Method, register
from oloraplus.errors import AdapterError

if TYPE_CHECKING:  # the record is read without torch or PEFT (CLI help); the attach imports them
    import torch

    from oloraplus.adapters.build import AdapterSpec, Attached, Calibration

METHOD = register(Method(
    name="eva", help="A = top-r right singular vectors of each layer's inputs on training batches, B = 0 (PEFT)",
    attach="oloraplus.adapters.methods.eva:attach_eva", a_markers=("lora_A",), b_markers=("lora_B",),
    composable=True,
))

RHO = 1.0  # no rank redistribution: r per layer, as for every other method
MAX_BATCHES = 500  # forward passes before we call the incremental SVD unconverged (tiny models need ~10)


def attach_eva(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
               calibration: Calibration | None = None) -> Attached:
    """PEFT's LoRA with init_lora_weights="eva", then A from incremental SVDs of the layer inputs on `calibration`
    (response tokens only: PEFT's label mask), until each layer's top-r directions stop moving (cosine ≥ 0.99)."""
    from peft import EvaConfig, initialize_lora_eva_weights

    from oloraplus.adapters.build import lora_model

    if calibration is None or len(calibration) == 0:
        raise AdapterError("--method eva: needs training batches for its init (attach_adapter(..., calibration=...))")
    passes = 0

    def forward(m: torch.nn.Module, batch: dict) -> Any:
        nonlocal passes
        passes += 1
        if passes > MAX_BATCHES:
            raise AdapterError(f"--method eva: the layer-input SVDs did not converge within {MAX_BATCHES} "
                               "training batches (too few response tokens per batch for --rank?)")
        return m(**batch)

    with warnings.catch_warnings():
        # advice about memory, not results; and packed batches carry use_cache=False, which PEFT "cannot move"
        warnings.filterwarnings("ignore", message="lora with eva initialization used with low_cpu_mem_usage=False")
        warnings.filterwarnings("ignore", message="input of type <class 'bool'> could not be moved")
        peft_model = lora_model(model, spec, targets, init_lora_weights="eva", eva_config=EvaConfig(rho=RHO))
        initialize_lora_eva_weights(peft_model, calibration, forward_fn=forward, gather_distributed_inputs=False,
                                    show_progress_bar=False)
    return peft_model, {}
