"""`oloraplus export RUN_DIR --format gguf-lora`: the adapter as a llama.cpp LoRA GGUF.

Written like llama.cpp's `convert_lora_to_gguf.py`: KV `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`; per adapted weight `blk.N.<name>.weight.lora_a`
(numpy (r, in)) and `.lora_b` ((out, r)), float32. llama.cpp scales by alpha / r.

llama.cpp's `convert_hf_to_gguf.py` permutes the rows of Llama's q_proj and k_proj weights (HF's
rotate-half rotary layout → llama.cpp's interleaved one). ΔW = B·A must land on the same rows, so
B of q_proj / k_proj is permuted the same way (A, which acts on the input, is not); the converter
does this too. OLoRA/PiSSA adapters are already saved base-relative (rank 2r), so they need nothing else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from oloraplus.adapters.adapter_dir import (ScaledFactors, adapter_source, check_config, module_scale,
                                           read_adapter, read_config)
from oloraplus.errors import AdapterError, ConfigError, ModelError
from oloraplus.io import atomic_file

# HF module (inside model.layers.N) -> llama.cpp tensor name (gguf-py tensor_mapping, MODEL_ARCH.LLAMA)
LLAMA_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
ARCHITECTURES = {"LlamaForCausalLM": "llama"}  # HF architecture -> general.architecture
_MODULE = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)$")  # a saved module key


def llama_permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order: within each head, rows [0, d/2, 1, d/2+1, ...] of HF's order."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_lora_tensors(modules: dict[str, ScaledFactors], n_head: int, n_kv_head: int) -> dict[str, np.ndarray]:
    """Llama LoRA factors per saved module -> {llama.cpp tensor name: float32 array}, B of q/k permuted."""
    out: dict[str, np.ndarray] = {}
    for key, factors in modules.items():
        match = _MODULE.match(key)
        if match is None or match.group(2) not in LLAMA_NAMES:
            raise AdapterError(f"adapter module '{key}': llama.cpp has no LoRA slot for it "
                               f"(supported: {', '.join(LLAMA_NAMES)} in model.layers.N)")
        block, module = match.groups()
        B = factors.B.detach().float().cpu()
        if module in ("self_attn.q_proj", "self_attn.k_proj"):
            B = llama_permute(B, n_head if module == "self_attn.q_proj" else n_kv_head)
        name = f"blk.{block}.{LLAMA_NAMES[module]}.weight"
        out[f"{name}.lora_a"] = np.ascontiguousarray(factors.A.detach().float().cpu().numpy())
        out[f"{name}.lora_b"] = np.ascontiguousarray(B.numpy())
    return out


def check_representable(config: dict, path: Path) -> float:
    """Refuse what a llama.cpp LoRA cannot express; returns its alpha (scale × r: llama.cpp divides by r)."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(f"{path}: {peft_type} adapters have no llama.cpp form (only LoRA); "
                           "use oloraplus export --format merged and convert the merged model instead")
    check_config(config, path)  # a plain base-relative LoRA: no DoRA, biases, modules_to_save, OLoRA init
    for key, what in (("rank_pattern", "per-layer ranks"), ("alpha_pattern", "per-layer alphas")):
        if config.get(key):
            raise AdapterError(f"{path}: {what} ({key}) cannot be written as a llama.cpp LoRA (one alpha per file)")
    return module_scale(config, "", config["r"]) * config["r"]


def _base_config(model: str) -> dict:
    from oloraplus.models import resolve_model_path

    path = Path(resolve_model_path(model)) / "config.json"
    if not path.is_file():
        raise ModelError(f"--model {model}: the base model's config.json must be on this machine for gguf-lora")
    return json.loads(path.read_text(encoding="utf-8"))


def export_gguf_lora(run_dir: str | Path, output: str | Path, *, overwrite: bool = False,
                     model: str | None = None) -> Path:
    """RUN_DIR/adapter (or any PEFT LoRA directory) -> a llama.cpp LoRA GGUF at `output`, written to a temp name
    and renamed. `model`: `--model`, the base whose config names the layers, instead of the recorded one."""
    import gguf

    output = Path(output)
    if output.suffix != ".gguf":
        raise ConfigError(f"--output {output}: expected a .gguf file name")
    if output.exists() and not overwrite:
        raise ConfigError(f"--output {output}: exists; pass --overwrite to replace it")
    source = adapter_source(run_dir, model)
    path = source.path
    alpha = check_representable(read_config(path), path)
    base = _base_config(source.base_model)
    architecture = (base.get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise AdapterError(f"--model {source.base_model}: architecture {architecture} is not mapped to llama.cpp names "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    n_head = base["num_attention_heads"]
    tensors = gguf_lora_tensors(read_adapter(path).modules, n_head, base.get("num_key_value_heads") or n_head)
    with atomic_file(output) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=ARCHITECTURES[architecture])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return output
