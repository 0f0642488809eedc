"""oloraplus: fine-tune causal LMs with orthonormal (QR) initialised adapters (OLoRA, OLoRA+, OHoRA).

The public API (docs/api.md) is imported on first use, so `import oloraplus` loads neither torch nor PEFT:
`oloraplus.add_adapter`, `build_ratio_optimizer`, `ratio_param_groups`, `save_adapter`, `load_adapter`; the
trainers `OLoRAPlusTrainer` (+ `OLoRAPlusTrainingArguments`, `RatioOptimizerMixin`) and, with the [trl] extra,
`OLoRAPlusSFTTrainer` (+ `OLoRAPlusSFTConfig`).
"""

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# bitsandbytes (the [quantize] extra) warns when imported, which PEFT does whenever it is installed, that an optional
# kernel package for its CPU bf16 inference path is missing: a path oloraplus turns off (oloraplus.quantize).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_PUBLIC = {
    **dict.fromkeys(("add_adapter", "adapter_record", "build_ratio_optimizer", "ratio_param_groups", "save_adapter",
                     "load_adapter", "AdapterRecord"), "oloraplus.api"),
    **dict.fromkeys(("RatioOptimizerMixin", "OLoRAPlusTrainer", "OLoRAPlusTrainingArguments"), "oloraplus.train.mixin"),
    **dict.fromkeys(("OLoRAPlusSFTTrainer", "OLoRAPlusSFTConfig"), "oloraplus.train.trl_sft"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """PEP 562: the public names import their module (and torch, PEFT, transformers) only when first used."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'oloraplus' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
