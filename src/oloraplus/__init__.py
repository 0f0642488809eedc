"""oloraplus: fine-tune causal LMs with orthonormal (QR) initialised adapters (OLoRA, OLoRA+, OHoRA)."""

__version__ = "0.1.0"
