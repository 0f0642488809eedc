"""PiSSA (Meng et al. 2024): the top-r singular triplets of each weight; the base is shifted (adapters/pissa.py)."""

from oloraplus.adapters.registry import Method, register

METHOD = register(Method(
    name="pissa", help="top-r SVD of W, float32 factors; base W - s·B·A",
    attach="oloraplus.adapters.build:attach_pissa", a_markers=("lora_A",), b_markers=("lora_B",),
    shifts_base=True, composable=True,
))
