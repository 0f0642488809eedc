"""Read a PEFT LoRA adapter directory into its factors (A, B, s) per module, refusing what is not plain LoRA.

Composition (and the llama.cpp export) needs a plain, base-relative LoRA: ΔW = s·B·A with s = α/r
(α/√r with rsLoRA). Anything else (DoRA magnitudes, trained biases, embedding or modules_to_save
copies, inits that rewrote the base weight) would be silently dropped or double-counted by a sum
or a conversion, so it is refused here with a message naming the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.utils.other import get_pattern_key

from oloraplus.adapters import registry
from oloraplus.adapters.files import CONFIG_FILE, META_FILE, PICKLE_WEIGHTS_FILE, WEIGHTS_FILE
from oloraplus.errors import AdapterError
from oloraplus.rundir import ADAPTER_DIR

KEY_PREFIX = "base_model.model."  # PeftModel's prefix on every saved key

_FACTOR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
# Config fields that switch on something other than ΔW = s·B·A on a Linear/Conv1D weight.
_UNSUPPORTED_FIELDS = {
    "use_dora": "DoRA (use_dora) rescales W by a learned magnitude, so its deltas do not add",
    "modules_to_save": "modules_to_save stores full module copies, which are not part of ΔW = s·B·A",
    "trainable_token_indices": "trainable_token_indices stores embedding rows, which are not part of ΔW = s·B·A",
    "lora_bias": "lora_bias trains a bias on lora_B, which is not part of ΔW = s·B·A",
    "target_parameters": "target_parameters (LoRA on raw parameters) is not supported",
    "layer_replication": "layer_replication shares base layers between adapters, not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not a static ΔW",
    "velora_config": "VeLoRA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "arrow_config": "Arrow routing is not a static ΔW",
    "kasa_config": "KaSA is not supported",
    "use_qalora": "QALoRA is not supported",
}


@dataclass(frozen=True)
class ScaledFactors:
    """One adapted weight as saved: ΔW = s·B·A (transposed onto a Conv1D weight when fan_in_fan_out).

    Unlike `adapters.olora.LoraFactors` (a layer's initial A, B), it carries the layer's scale s."""

    A: torch.Tensor  # (r, n) — n = in_features
    B: torch.Tensor  # (m, r) — m = out_features
    s: float  # α/r, or α/√r with rsLoRA (LoRA eq. (3))

    @property
    def r(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(m, n) of ΔW in PEFT's out×in layout."""
        return self.B.shape[0], self.A.shape[1]


@dataclass(frozen=True)
class Adapter:
    source: str  # what the user passed (run or adapter directory)
    path: Path  # the adapter directory itself
    config: dict  # adapter_config.json as read
    modules: dict[str, ScaledFactors]  # saved key prefix (e.g. base_model.model.model.layers.0.self_attn.q_proj)
    fingerprint: str | None  # base_fingerprint from oloraplus_adapter.json, when recorded
    base_model: str | None
    method: str | None

    @property
    def name(self) -> str:
        """A short label: the run directory's name for a run, else the adapter directory's."""
        return (self.path.parent if self.path.name == ADAPTER_DIR else self.path).resolve().name

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out", False))


def target_name(key: str) -> str:
    """The module name PEFT matches target_modules / rank_pattern against (saved key minus prefix)."""
    return key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key


def resolve_adapter_dir(source: str | Path) -> Path:
    """An adapter directory, or a run directory holding one under `adapter/`."""
    path = Path(source)
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / ADAPTER_DIR).is_dir():
        if not (path / ADAPTER_DIR / CONFIG_FILE).is_file():
            raise AdapterError(f"{path / ADAPTER_DIR / CONFIG_FILE}: missing")
        return path / ADAPTER_DIR
    if not path.exists():
        raise AdapterError(f"{path}: not found")
    raise AdapterError(
        f"{path / CONFIG_FILE}: missing (expected an adapter directory or a run directory with adapter/)"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return data


def check_config(config: dict, path: Path) -> None:
    """Refuse configs whose adapters are not plain base-relative LoRA (see module docstring)."""
    where = path / CONFIG_FILE
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{where}: peft_type {config.get('peft_type')!r} is not supported, only LORA adapters are")
    for field, why in _UNSUPPORTED_FIELDS.items():
        if config.get(field):
            raise AdapterError(f"{where}: {field}: {why}")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias={config['bias']!r} trains base biases, which are not part of ΔW = s·B·A (need 'none')")
    init = config.get("init_lora_weights", True)
    if not registry.init_is_base_relative(init):
        raise AdapterError(
            f"{where}: init_lora_weights={init!r} changed the base weight, so ΔW = s·B·A is not base-relative; "
            "export the adapter base-relative first"
        )
    for field in ("r", "lora_alpha"):
        value = config.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise AdapterError(f"{where}: {field} must be a positive number, got {value!r}")


def read_config(path: Path) -> dict:
    """adapter_config.json of an adapter directory (from `resolve_adapter_dir`), as a dict."""
    return _read_json(path / CONFIG_FILE)


def _read_meta(path: Path) -> dict:
    meta_path = path / META_FILE
    return _read_json(meta_path) if meta_path.is_file() else {}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights of an adapter directory; pickled `.bin` weights are refused."""
    from safetensors.torch import load_file

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        if (path / PICKLE_WEIGHTS_FILE).is_file():
            raise AdapterError(f"{path / PICKLE_WEIGHTS_FILE}: pickle weights are not loaded; re-save with safetensors")
        raise AdapterError(f"{weights}: missing")
    try:
        return load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError/OSError/ValueError for damaged files
        raise AdapterError(f"{weights}: truncated or corrupt safetensors file ({exc})".splitlines()[0]) from exc


def module_scale(config: dict, module: str, r: int) -> float:
    """s for one module: α/r, or α/√r with rsLoRA, honouring PEFT's alpha_pattern."""
    alpha_pattern = config.get("alpha_pattern") or {}
    key = get_pattern_key(list(alpha_pattern), module)
    alpha = alpha_pattern.get(key, config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


_NOT_LORA = [  # (marker in a saved key, why it is not a LoRA factor), most telling first
    ("lora_magnitude_vector", "a DoRA magnitude vector"),
    ("lora_embedding_", "LoRA on an embedding layer"),
    (".bias", "a trained bias"),
]


def _unsupported_reason(keys: list[str]) -> tuple[str, str]:
    """(key, why) for the most telling of the tensors that are not LoRA factors."""
    for marker, why in _NOT_LORA:
        for key in keys:
            if marker in key:
                return key, why
    return keys[0], "not a lora_A/lora_B weight (modules_to_save, trainable tokens or another adapter type)"


def factors_from_tensors(tensors: dict[str, torch.Tensor], config: dict, path: Path) -> dict[str, ScaledFactors]:
    """Pair lora_A/lora_B tensors per module and check their shapes against the config's ranks."""
    where = path / WEIGHTS_FILE
    others = [key for key in tensors if not _FACTOR_KEY.match(key)]
    if others:
        key, why = _unsupported_reason(others)
        raise AdapterError(f"{where}: tensor {key!r} is {why}; only plain LoRA is supported")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _FACTOR_KEY.match(key)
        pairs.setdefault(match["module"], {})[match["factor"]] = tensor
    if not pairs:
        raise AdapterError(f"{where}: holds no lora_A/lora_B tensors")
    rank_pattern = config.get("rank_pattern") or {}
    modules = {}
    for module, pair in sorted(pairs.items()):
        name = target_name(module)
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise AdapterError(f"{where}: {name}: {missing}.weight is missing (truncated or corrupt file)")
        A, B = pair["A"], pair["B"]
        if A.ndim != 2 or B.ndim != 2:
            raise AdapterError(f"{where}: {name}: {A.ndim}-d LoRA factors (convolution?) are not supported")
        if A.shape[0] != B.shape[1]:
            raise AdapterError(f"{where}: {name}: lora_A rank {A.shape[0]} != lora_B rank {B.shape[1]}")
        r_config = rank_pattern.get(get_pattern_key(list(rank_pattern), name), config["r"])
        if A.shape[0] != r_config:
            raise AdapterError(f"{where}: {name}: tensors have rank {A.shape[0]} but {CONFIG_FILE} says r={r_config}")
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise AdapterError(f"{where}: {name}: non-finite values (corrupt file?)")
        modules[module] = ScaledFactors(A=A, B=B, s=module_scale(config, name, A.shape[0]))
    return modules


def read_adapter(source: str | Path) -> Adapter:
    """Read and validate one adapter (or run) directory; raises AdapterError naming the bad file."""
    path = resolve_adapter_dir(source)
    config = read_config(path)
    check_config(config, path)
    meta = _read_meta(path)
    modules = factors_from_tensors(load_tensors(path), config, path)
    return Adapter(
        source=str(source),
        path=path,
        config=config,
        modules=modules,
        fingerprint=meta.get("base_fingerprint"),
        base_model=meta.get("base_model") or config.get("base_model_name_or_path"),
        method=meta.get("method"),
    )
