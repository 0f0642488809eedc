"""HiRA (Huang et al. 2025): ΔW = W0 ⊙ (B·A), PEFT's own tuner (adapters/hira.py)."""

from oloraplus.adapters.registry import Method, register

METHOD = register(Method(
    name="hira", help="ΔW = W0 ⊙ (B·A), B = 0 at init (PEFT)", attach="oloraplus.adapters.build:attach_hira",
    a_markers=("hira_A",), b_markers=("hira_B",),
))
