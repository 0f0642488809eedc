"""Save adapters in PEFT format so they load onto the untouched base model.

OLoRA and PiSSA train on a shifted base W − s·B0·A0, so their trained factors alone are wrong on
W. The model computes (W − s·B0·A0) + s·Bt·At = W + s·(Bt·At − B0·A0), which is the rank-2r LoRA
A' = [At; A0], B' = [Bt, −B0] with r' = 2r and α' = 2α (same s = α/r): that is what we write. Under rsLoRA
(s = α/√r) α' = √2·α instead; per-layer α patterns scale the same way.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file

from oloraplus.adapters import registry
from oloraplus.adapters.adapter_dir import load_metadata
from oloraplus.adapters.files import CONFIG_FILE, META_FILE, PICKLE_WEIGHTS_FILE, WEIGHTS_FILE
from oloraplus.adapters.olora import LoraFactors
from oloraplus.errors import AdapterError
from oloraplus.io import atomic_write_json, atomic_write_text, follow_umask
from oloraplus.models import base_provenance, portable_name


def _base_relative_state(
    state: dict[str, torch.Tensor], initial_factors: dict[str, LoraFactors]
) -> dict[str, torch.Tensor]:
    """A new state dict with every (At, Bt) replaced by ([At; A0], [Bt, −B0]), in float32."""
    converted = dict(state)
    layers = {key.rsplit(".lora_", 1)[0] for key in state if ".lora_A." in key or ".lora_B." in key}
    missing = sorted(layers - set(initial_factors))
    if missing:
        raise AdapterError(f"save adapter: no initial factors for layer '{missing[0]}' (build it with attach_adapter)")
    for name in layers:
        A_0, B_0 = initial_factors[name]
        A_t, B_t = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
        converted[f"{name}.lora_A.weight"] = torch.cat([A_t.float().cpu(), A_0.float()], dim=0)  # (2r, in)
        converted[f"{name}.lora_B.weight"] = torch.cat([B_t.float().cpu(), -B_0.float()], dim=1)  # (out, 2r)
    return {key: t.detach().cpu().contiguous() for key, t in converted.items()}


def save_adapter(
    peft_model: PeftModel,
    path: str | os.PathLike,
    initial_factors: dict[str, LoraFactors],
    extra_metadata: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a safetensors PEFT adapter directory that reproduces `peft_model` on the untouched base.

    `state_dict`: the adapter's tensors when the model's own are sharded (`--fsdp` gathers them first).

    With `extra_metadata["base_model"]` (the `--model` given), adapter_config.json names the base by its
    portable name, and oloraplus_adapter.json keeps the local path and how those weights were made.
    """
    path = Path(path)
    adapter_name = peft_model.active_adapter
    config = peft_model.peft_config[adapter_name]
    path.mkdir(parents=True, exist_ok=True)
    if not registry.init_shifts_base(getattr(config, "init_lora_weights", True)):  # HiRA, OHoRA: already base-relative
        if initial_factors:
            raise AdapterError(
                f"save adapter {path}: initial factors given, but adapter '{adapter_name}' did not modify the base"
            )
        peft_model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    else:
        if not initial_factors:
            raise AdapterError(
                f"save adapter {path}: a {config.init_lora_weights} adapter needs the initial factors "
                "returned by attach_adapter"
            )
        state = get_peft_model_state_dict(peft_model, state_dict=state_dict, adapter_name=adapter_name)
        save_file(_base_relative_state(state, initial_factors), path / WEIGHTS_FILE, metadata={"format": "pt"})
        saved = copy.deepcopy(config)
        alpha_factor = math.sqrt(2) if saved.use_rslora else 2  # keep s = α/r (α/√r with rsLoRA) at rank 2r
        saved.r *= 2
        saved.lora_alpha *= alpha_factor
        saved.rank_pattern = {k: 2 * v for k, v in (saved.rank_pattern or {}).items()}
        saved.alpha_pattern = {k: alpha_factor * v for k, v in (saved.alpha_pattern or {}).items()}
        saved.init_lora_weights = True  # loading must not re-run the QR/SVD init on the base
        saved.inference_mode = True
        if saved.base_model_name_or_path is None:
            saved.base_model_name_or_path = getattr(peft_model.get_base_model(), "name_or_path", None) or None
        saved.save_pretrained(path)
    source = (extra_metadata or {}).get("base_model")
    if source:
        local = getattr(peft_model.get_base_model(), "name_or_path", None) or None
        extra_metadata = {**extra_metadata, **base_provenance(source, local)}
        _name_base(path, local, portable_name(source))
    if extra_metadata is not None:
        atomic_write_json(path / META_FILE, extra_metadata)
    follow_umask(path / WEIGHTS_FILE)  # safetensors writes it 0600; `path` may hold the caller's own files
    return path


def _name_base(path: Path, local: str | None, name: str) -> None:
    """Name the base as llama.cpp, vLLM and the Hub can resolve it, not by this machine's cache path.

    Done after PEFT's save, which reads the base's config from that name and would go to the Hub for it.
    """
    config_file = path / CONFIG_FILE
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = name
    atomic_write_json(config_file, config)
    card = path / "README.md"  # PEFT's model card names the base by the loaded config's path
    if local and card.is_file():
        atomic_write_text(card, card.read_text(encoding="utf-8").replace(local, name))


def check_adapter_weights(path: Path) -> None:
    """Refuse pickle-only, corrupt or non-finite adapter weights before PEFT ever opens them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        found = ", ".join(sorted(p.name for p in path.glob("adapter_model*"))) or "nothing"
        raise AdapterError(f"{weights}: missing (found {found}); only safetensors adapter weights are loaded, "
                           f"never pickle files like {PICKLE_WEIGHTS_FILE}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdapterError(f"{path}: tensor '{name}' holds non-finite values (NaN/inf)")


def load_adapter(base_model: torch.nn.Module, path: str | os.PathLike) -> PeftModel:
    """Load a saved adapter onto `base_model` (modified in place) for inference."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"--adapter {path}: not an adapter directory (no {CONFIG_FILE})")
    from oloraplus.adapters.ohora_peft import OHoRAConfig, fold_initial_, load_ohora  # registers OHORA with PEFT

    check_adapter_weights(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            ohora = isinstance(PeftConfig.from_pretrained(str(path)), OHoRAConfig)
            if ohora:  # saved A0, B0: no QR per layer
                model = load_ohora(base_model, path)
            else:
                model = PeftModel.from_pretrained(base_model, str(path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise AdapterError(f"--adapter {path}: cannot load: {str(exc).splitlines()[0]}") from exc
    meta = load_metadata(path) or {}
    if meta.get("quantize", "none") != "none":
        from oloraplus.adapters.quantized import has_quantized_layers, reshift_

        # A --quantize run's adapter on its quantized base: rebuild the base it trained on (adapters/quantized.py)
        method = meta.get("method")
        if has_quantized_layers(model) and ohora:
            fold_initial_(model, model.active_adapter)  # Q(deq(Q(W0)) − s·A0 ⊗ B0ᵀ)
        elif has_quantized_layers(model) and method in registry.names() and registry.get(method).shifts_base:
            reshift_(model, model.active_adapter)  # Q(deq(Q(W0)) − s·B0·A0) and the live half (At, Bt)
    return model
