"""oloraplus: fine-tune causal LMs with orthonormal (QR) initialised adapters (OLoRA, OLoRA+, OHoRA)."""

import logging

__version__ = "0.1.0"

# bitsandbytes (the [quantize] extra) warns when imported, which PEFT does whenever it is installed, that an optional
# kernel package for its CPU bf16 inference path is missing: a path oloraplus turns off (oloraplus.quantize).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
