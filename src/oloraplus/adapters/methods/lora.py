"""LoRA (Hu et al. 2021): PEFT's default init, B = 0; with --ratio it is LoRA+."""

from oloraplus.adapters.registry import Method, register

METHOD = register(Method(
    name="lora", help="PEFT's LoRA, B = 0 at init (LoRA+ with --ratio)",
    attach="oloraplus.adapters.build:attach_lora", a_markers=("lora_A",), b_markers=("lora_B",),
    composable=True,
))
