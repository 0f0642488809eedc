"""OHoRA (Zhang et al. 2025): QR-ranked Kronecker factors, m + n parameters per layer (adapters/ohora*.py)."""

from oloraplus.adapters.registry import Method, register

METHOD = register(Method(
    name="ohora", help="QR-ranked Kronecker A ⊗ Bᵀ, m + n parameters per layer (--ohora-init)",
    attach="oloraplus.adapters.build:attach_ohora", a_markers=("ohora_A",), b_markers=("ohora_B",),
))
