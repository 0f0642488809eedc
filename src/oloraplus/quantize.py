"""`--quantize nf4|fp4|int8`: the frozen base loaded by bitsandbytes through transformers' `BitsAndBytesConfig`.

bitsandbytes is an optional extra (`pip install 'oloraplus[quantize]'`). `check_quantize` runs in the config's
validation, before the model loads, so a missing extra or a method that cannot run on the format is one line and
nothing is written; `models.load_model` uses `bnb_config` and `prepare_quantized_`. Adapters (and so the optimizer
state) stay float32: PEFT keeps them in float32 on a low-precision base. docs/quantize.md says what is exact.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from oloraplus.errors import ConfigError

if TYPE_CHECKING:  # the config checks run before torch is imported
    import torch

EXTRA = "pip install 'oloraplus[quantize]'"
# (method, format) pairs that do not run, with the alternative; measured with bitsandbytes 0.50.2 and PEFT 0.21.2.
REFUSED = {
    ("dora", "int8"): "PEFT's DoRA dequantizes the 8-bit weight and bitsandbytes' int8 matmul then fails on its "
                      "state; use --quantize nf4 (DoRA runs on 4-bit bases) or --method lora",
}


def bitsandbytes_installed() -> bool:
    try:
        return importlib.util.find_spec("bitsandbytes") is not None
    except (ImportError, ValueError):  # a module entry of None (simulated absence) or a broken install
        return False


def check_quantize(quantize: str, method: str) -> None:
    """Before anything loads: the extra is installed and `method` runs on this format (one line naming both)."""
    if quantize == "none":
        return
    if not bitsandbytes_installed():
        raise ConfigError(f"--quantize {quantize}: needs bitsandbytes, which is not installed ({EXTRA})")
    reason = REFUSED.get((method, quantize))
    if reason:
        raise ConfigError(f"--method {method} with --quantize {quantize}: not supported: {reason}")


def bnb_config(quantize: str, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for a --quantize value: 4-bit NF4/FP4 (matmuls in `compute_dtype`), or
    LLM.int8() 8-bit. Single quantization of the 4-bit block scales: the re-quantized residual of OLoRA/PiSSA/OHoRA
    then uses the same format as the loaded base."""
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_compute_dtype=compute_dtype)


def prepare_quantized_(model: torch.nn.Module) -> None:
    """Keep every 4-bit matmul in the compute dtype, in training and evaluation alike.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight in place the first time it runs in
    eval mode without gradients, and from then on multiplies in bf16 with a kernel that has no backward: the eval
    loss would be bf16 while training is fp32, and a training step after a periodic eval would silently send no
    gradient through the base layers. Turning that path off keeps one fp32 path (and the packed layout never
    reaches the OLoRA/PiSSA re-quantization).
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
