"""DoRA (Liu et al. 2024): LoRA plus a learned magnitude vector (PEFT's use_dora); its magnitude stays at η."""

from oloraplus.adapters.registry import Method, register

METHOD = register(Method(
    name="dora", help="weight-decomposed LoRA: a learned magnitude times the direction W + s·B·A",
    attach="oloraplus.adapters.build:attach_dora", a_markers=("lora_A",), b_markers=("lora_B",),
))
