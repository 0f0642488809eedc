"""OLoRA (Büyükakyüz 2024): B, A = Q_r, R_r of each weight; the base is shifted (adapters/olora.py)."""

from oloraplus.adapters.registry import Method, register

METHOD = register(Method(
    name="olora", help="B = Q_r, A = R_r from the QR of W; base W - s·B·A (OLoRA+ with --ratio)",
    attach="oloraplus.adapters.build:attach_olora", a_markers=("lora_A",), b_markers=("lora_B",),
    shifts_base=True, composable=True,
))
