"""Sum LoRA adapters exactly: ΔW = Σ_i w_i ΔW_i as one concatenated-rank LoRA (Cao et al., naive summation).

Why concatenation: s·B·A is bilinear, so averaging the A's and the B's separately gives
(Σ w_i B_i)(Σ w_j A_j) = Σ_i Σ_j w_i w_j B_i A_j, whose cross terms B_i A_j belong to no adapter; it is
not ΔW-additive. Stacking the factors instead,

    A = [A_1; A_2; ...]                      # (Σ r_i, n)
    B = [w_1 s_1/s B_1, w_2 s_2/s B_2, ...]  # (m, Σ r_i)

gives s·B·A = Σ_i w_i s_i B_i A_i exactly. We take the output scale s = 1 (lora_alpha = r = Σ r_i, no
rsLoRA) and fold each w_i s_i into its block of B.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from oloraplus.adapters.files import CONFIG_FILE, META_FILE, WEIGHTS_FILE
from oloraplus.adapters.adapter_dir import Adapter, read_adapter, target_name
from oloraplus.errors import AdapterError
from oloraplus.io import follow_umask


def check_compatible(adapters: Sequence[Adapter]) -> None:
    """Refuse adapters whose deltas live on different bases or different weights."""
    if not adapters:
        raise AdapterError("compose: no adapters given")
    first = adapters[0]
    for other in adapters[1:]:
        pair = f"{first.path} and {other.path}"
        if first.fingerprint and other.fingerprint and first.fingerprint != other.fingerprint:
            raise AdapterError(
                f"{pair}: different base fingerprints ({first.fingerprint} vs {other.fingerprint}): "
                "trained on different base models"
            )
        if set(first.modules) != set(other.modules):
            only_first = sorted(set(first.modules) - set(other.modules))
            only_other = sorted(set(other.modules) - set(first.modules))
            example = f"{only_first[0]} only in {first.path}" if only_first else f"{only_other[0]} only in {other.path}"
            raise AdapterError(f"{pair}: different target modules ({example})")
        for module, factors in first.modules.items():
            if factors.shape != other.modules[module].shape:
                raise AdapterError(
                    f"{pair}: different shapes for {target_name(module)} "
                    f"({factors.shape} vs {other.modules[module].shape}): different base models"
                )
        if first.fan_in_fan_out != other.fan_in_fan_out:
            raise AdapterError(f"{pair}: different fan_in_fan_out in {CONFIG_FILE}")


def _as_adapters(adapters: Sequence[Adapter | str | Path]) -> list[Adapter]:
    return [a if isinstance(a, Adapter) else read_adapter(a) for a in adapters]


def _output_config(first: Adapter, ranks: dict[str, int]) -> dict:
    """The first adapter's config, retargeted to exactly the summed modules with s = 1 everywhere."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    # Longest names first: PEFT takes the first pattern that matches a module name as a suffix.
    pattern = {name: rank for name, rank in sorted(ranks.items(), key=lambda kv: (-len(kv[0]), kv[0])) if rank != r}
    config = dict(first.config)
    config.update(
        r=r,
        lora_alpha=r,
        use_rslora=False,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),  # α = r per module, so s = 1
        target_modules=sorted(ranks),
        layers_to_transform=None,
        layers_pattern=None,
        exclude_modules=None,
        init_lora_weights=True,
        lora_dropout=0.0,
        inference_mode=True,
    )
    return config


def sum_adapters(
    adapters: Sequence[Adapter | str | Path], weights: list[float] | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of the LoRA with ΔW = Σ w_i ΔW_i, rank Σ r_i (see module docstring).

    `weights` defaults to 1 for every adapter (the paper's naive sum).
    """
    adapters = _as_adapters(adapters)
    check_compatible(adapters)
    if weights is None:
        weights = [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise AdapterError(f"compose: {len(weights)} weights for {len(adapters)} adapters")
    if not all(math.isfinite(w) for w in weights):
        raise AdapterError(f"compose: weights must be finite numbers, got {weights}")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module in adapters[0].modules:
        parts = [a.modules[module] for a in adapters]
        dtype = functools.reduce(torch.promote_types, [t.dtype for p in parts for t in (p.A, p.B)])
        wide = torch.promote_types(dtype, torch.float32)  # scale bf16 factors in fp32, round once
        A = torch.cat([p.A.to(dtype) for p in parts], dim=0)  # (Σ r_i, n)
        # (m, Σ r_i): block i is w_i s_i B_i, as the output scale is s = 1
        B = torch.cat([(p.B.to(wide) * (w * p.s)).to(dtype) for p, w in zip(parts, weights)], dim=1)
        tensors[f"{module}.lora_A.weight"] = A.contiguous()
        tensors[f"{module}.lora_B.weight"] = B.contiguous()
        ranks[target_name(module)] = A.shape[0]
    return _output_config(adapters[0], ranks), tensors


def write_adapter(
    config: dict, tensors: dict[str, torch.Tensor], out_dir: str | Path, meta: dict | None = None
) -> Path:
    """Write a PEFT adapter directory atomically (temp dir beside it, then rename); refuse a non-empty out_dir.

    `meta`, when given, is written as oloraplus_adapter.json so the result composes again.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AdapterError(f"{out_dir}: already exists and is not empty; choose a new output directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        follow_umask(tmp)
        try:
            os.rename(tmp, out_dir)  # replaces an empty directory, fails on a non-empty one
        except OSError as exc:
            raise AdapterError(f"{out_dir}: cannot write adapter ({exc.strerror})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
