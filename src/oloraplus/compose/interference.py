"""Interference between adapters: pairwise cosine of their deltas per layer, RMS over layers (Cao et al.).

Cao et al. find that the RMS over layers of cos(ΔW_i, ΔW_j) grows roughly linearly with the
perplexity lost by summing adapters i and j: near-orthogonal deltas add without interfering. Every
inner product is taken from the factors, ⟨B_1A_1, B_2A_2⟩_F = tr((B_1ᵀB_2)(A_2A_1ᵀ)), in
O((m+n)·r_1·r_2) and without building an m×n matrix. A "layer" is one adapted weight matrix.
An all-zero delta (e.g. an untrained B = 0) has cosine 0 with everything, itself included.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from oloraplus.compose import HEATMAP_FILE, INTERFERENCE_FILE
from oloraplus.adapters.adapter_dir import Adapter, ScaledFactors, target_name
from oloraplus.compose.sum import check_compatible
from oloraplus.io import atomic_write_text

@dataclass(frozen=True)
class Interference:
    names: list[str]  # one label per adapter, in input order
    layers: dict[str, torch.Tensor]  # module name -> (N, N) cos(ΔW_i, ΔW_j) in that layer
    overall: torch.Tensor  # (N, N) sqrt(mean over layers of cos²)

    def to_dict(self) -> dict:
        return {
            "adapters": self.names,
            "metric": "cosine similarity of flattened ΔW per layer; overall = RMS over layers",
            "num_layers": len(self.layers),
            "overall_rms_cosine": self.overall.tolist(),
            "layers": {name: cos.tolist() for name, cos in self.layers.items()},
        }


def delta_inner(a: ScaledFactors, b: ScaledFactors) -> float:
    """⟨s_a B_a A_a, s_b B_b A_b⟩_F = s_a s_b tr((B_aᵀB_b)(A_bA_aᵀ)), in float64."""
    BtB = a.B.double().T @ b.B.double()  # (r_a, r_b)
    AAt = a.A.double() @ b.A.double().T  # (r_a, r_b); tr(X Y) = Σ X ⊙ Yᵀ
    return a.s * b.s * float((BtB * AAt).sum())


def delta_cosine(a: ScaledFactors, b: ScaledFactors) -> float:
    """cos(ΔW_a, ΔW_b) of the flattened deltas; 0 when either delta is zero."""
    norm = math.sqrt(max(delta_inner(a, a), 0.0) * max(delta_inner(b, b), 0.0))
    if norm == 0.0:
        return 0.0
    return max(-1.0, min(1.0, delta_inner(a, b) / norm))


def unique_labels(names: Sequence[str]) -> list[str]:
    """Input labels, numbered where two adapters share a name."""
    counts = Counter(names)
    return [f"{name}#{i + 1}" if counts[name] > 1 else name for i, name in enumerate(names)]


def interference(adapters: Sequence[Adapter]) -> Interference:
    """Per-layer pairwise cosines and their RMS over layers, for compatible adapters."""
    check_compatible(adapters)
    layers = {}
    for module in adapters[0].modules:
        factors = [a.modules[module] for a in adapters]
        cos = torch.tensor([[delta_cosine(f, g) for g in factors] for f in factors], dtype=torch.float64)
        layers[target_name(module)] = cos
    overall = torch.stack(list(layers.values())).pow(2).mean(dim=0).sqrt()  # RMS over layers
    return Interference(names=unique_labels([a.name for a in adapters]), layers=layers, overall=overall)


def format_table(result: Interference) -> str:
    """The overall matrix as a small aligned text table."""
    width = max(8, *(len(name) for name in result.names))
    lines = [" " * width + "".join(f"  {name:>{width}}" for name in result.names)]
    for name, row in zip(result.names, result.overall.tolist()):
        lines.append(f"{name:<{width}}" + "".join(f"  {value:>{width}.3f}" for value in row))
    return "\n".join(lines)


def _plot_heatmap(result: Interference, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(result.names)
    fig = Figure(figsize=(2.0 + 1.0 * n, 1.5 + 1.0 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(result.overall.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), result.names, rotation=45, ha="right")
    ax.set_yticks(range(n), result.names)
    for i in range(n):
        for j in range(n):
            value = float(result.overall[i, j])
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="black" if value > 0.6 else "white")
    ax.set_title(f"RMS cosine of ΔW over {len(result.layers)} layers")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def write_interference(result: Interference, out_dir: str | Path) -> tuple[Path, Path]:
    """Write interference.json and the heatmap PNG of the overall RMS cosine into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / INTERFERENCE_FILE, out_dir / HEATMAP_FILE
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    _plot_heatmap(result, png_path)
    return json_path, png_path
