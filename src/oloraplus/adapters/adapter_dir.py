"""Read a PEFT LoRA adapter directory: its config, metadata and weights, the base it goes on, and checks.

Every command that takes an adapter reads it here (`generate`, `eval`, `export`, `merge`, `compose`, the vLLM
check), so an adapter trained by oloraplus, by plain PEFT or summed by `oloraplus compose` is accepted the same way.

`adapter_source` resolves what the user passed (a run, a directory holding `adapter/`, or an adapter directory)
to the adapter and its base: the run's `--model`, else `--model` given now, else the base the adapter names
(oloraplus_adapter.json's `base_model`, then adapter_config.json's `base_model_name_or_path`). `check_base` then
refuses a loaded base the adapter does not fit (fingerprint when recorded, and every factor's shape).

Composition (and the llama.cpp export) needs a plain, base-relative LoRA: ΔW = s·B·A with s = α/r
(α/√r with rsLoRA). Anything else (DoRA magnitudes, trained biases, embedding or modules_to_save
copies, inits that rewrote the base weight) would be silently dropped or double-counted by a sum
or a conversion, so `read_adapter` refuses it with a message naming the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from oloraplus.adapters import registry
from oloraplus.adapters.files import CONFIG_FILE, META_FILE, PICKLE_WEIGHTS_FILE, WEIGHTS_FILE
from oloraplus.errors import AdapterError
from oloraplus.rundir import ADAPTER_DIR

if TYPE_CHECKING:  # torch and PEFT load in seconds: a wrong path is refused before them
    import torch

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


def load_metadata(path: str | Path) -> dict | None:
    """oloraplus_adapter.json of an adapter directory (base fingerprint, base, method), or None without one."""
    meta_path = Path(path) / META_FILE
    return _read_json(meta_path) if meta_path.is_file() else None


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
    from peft.utils.other import get_pattern_key

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
    import torch
    from peft.utils.other import get_pattern_key

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
    meta = load_metadata(path) or {}
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


@dataclass(frozen=True)
class AdapterSource:
    """What `generate`, `eval` and `export` load: an adapter directory and the base model it goes on."""

    path: Path  # the adapter directory
    base_model: str  # the --model to load it onto
    run_dir: Path | None  # the oloraplus run it belongs to (its config.yaml rebuilds data and options), else None
    fingerprint: str | None  # base_fingerprint recorded in oloraplus_adapter.json
    named_by: str  # where base_model came from, for messages: "--model", or the file and field


def add_model_argument(parser) -> None:
    """`--model` for commands that take an adapter: the base it loads onto, when not the one it records."""
    parser.add_argument("--model", default=None, metavar="BASE",
                        help="the base model to load the adapter onto (default: the run's --model, else the "
                        "adapter's base_model_name_or_path); HF hub id, local model dir, .gguf file or alias")


def _base_candidates(path: Path, config: dict, meta: dict) -> list[tuple[str, str]]:
    """(base, where it is named) in order of preference: the --model given at training, then the portable name."""
    named = [(meta.get("base_model"), f"{path / META_FILE}: base_model"),
             (meta.get("base_model_local_path"), f"{path / META_FILE}: base_model_local_path"),
             (config.get("base_model_name_or_path"), f"{path / CONFIG_FILE}: base_model_name_or_path")]
    candidates: dict[str, str] = {}
    for name, where in named:
        if isinstance(name, str) and name:
            candidates.setdefault(name, where)
    return list(candidates.items())


def _resolve_base(path: Path, config: dict, meta: dict) -> tuple[str, str]:
    """The first base the adapter names that resolves here, else one line naming them and --model."""
    from oloraplus.errors import ModelError
    from oloraplus.models import resolve_model_path

    candidates = _base_candidates(path, config, meta)
    if not candidates:
        raise AdapterError(f"{path / CONFIG_FILE}: base_model_name_or_path is not set, so the base model is "
                           "unknown; pass --model BASE")
    reasons = []
    for name, where in candidates:
        try:
            resolve_model_path(name)
        except ModelError as exc:
            reasons.append(f"{Path(where).name} {name!r}: {str(exc).split(': ', 1)[-1]}")
            continue
        return name, where
    raise AdapterError(f"{path}: cannot find the base model it names here (" + "; ".join(reasons)
                       + "); pass --model BASE")


def adapter_source(source: str | Path, model: str | None = None) -> AdapterSource:
    """Resolve a run, a directory holding `adapter/` (what `compose` writes) or an adapter directory, with `model`
    (`--model`) overriding the base it records. Reads no weights; raises a one-line error naming the file."""
    from oloraplus import rundir

    path = Path(source)
    if rundir.is_run(path) or not path.exists():  # a missing path: the run messages (typo, unfinished run)
        cfg = rundir.load_run_config(path)
        adapter = path / ADAPTER_DIR
        meta = load_metadata(adapter) or {}
        return AdapterSource(adapter, model or cfg.model, path, meta.get("base_fingerprint"),
                             "--model" if model else f"{path / rundir.CONFIG_FILE}: model")
    if not ((path / CONFIG_FILE).is_file() or (path / ADAPTER_DIR).is_dir()):
        raise AdapterError(f"{path}: not an oloraplus run (no {rundir.CONFIG_FILE}) nor an adapter directory "
                           f"(no {CONFIG_FILE})")
    adapter = resolve_adapter_dir(path)
    config = read_config(adapter)
    meta = load_metadata(adapter) or {}
    base, named_by = (model, "--model") if model else _resolve_base(adapter, config, meta)
    return AdapterSource(adapter, base, None, meta.get("base_fingerprint"), named_by)


def check_base(model: torch.nn.Module, source: AdapterSource, fingerprint: str) -> None:
    """Refuse a base the adapter was not trained on: plausible-looking garbage otherwise, or PEFT's multi-line
    state-dict error. `fingerprint`: models.base_fingerprint of the loaded base."""
    if source.fingerprint and source.fingerprint != fingerprint:
        raise AdapterError(f"{source.path}: trained on another base model (base fingerprint {source.fingerprint} "
                           f"!= {fingerprint} of --model {source.base_model})")
    check_shapes(model, source)


def _factor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Saved key -> shape, read from the safetensors header alone; {} when unreadable (load_adapter names why)."""
    from safetensors import safe_open

    if not weights.is_file():
        return {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception:  # safetensors raises several types for a damaged file
        return {}


def check_shapes(model: torch.nn.Module, source: AdapterSource) -> None:
    """Every lora_A (r, in) and lora_B (out, r) against the base layer it adapts, and their ranks against each
    other; other tensors (DoRA magnitudes, OHoRA/HiRA factors) are left to PEFT."""
    weights = source.path / WEIGHTS_FILE
    shapes = _factor_shapes(weights)
    wrong_base = f"the adapter was trained on another base (this one came from {source.named_by})"
    for key, shape in sorted(shapes.items()):
        match = _FACTOR_KEY.match(key)
        if match is None or len(shape) != 2:
            continue
        name, factor = target_name(match["module"]), match["factor"]
        if factor == "A":
            B = shapes.get(f"{match['module']}.lora_B.weight")
            if B is not None and len(B) == 2 and B[1] != shape[0]:
                raise AdapterError(f"{weights}: {name}: lora_A rank {shape[0]} != lora_B rank {B[1]}")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise AdapterError(f"{weights}: {name}: --model {source.base_model} has no such module; "
                               f"{wrong_base}") from None
        out_in = _out_in(layer)
        if not out_in:
            continue
        side, got, want = ("in", shape[1], out_in[1]) if factor == "A" else ("out", shape[0], out_in[0])
        if got != want:
            raise AdapterError(f"{weights}: {name}: lora_{factor} has {side}_features {got} but --model "
                               f"{source.base_model} has {want} there; {wrong_base}")


def _out_in(layer: torch.nn.Module) -> tuple[int, int] | tuple[()]:
    """(out, in) features of an adaptable layer (Linear, bitsandbytes Linear, GPT-2's Conv1D); () when unknown."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(layer, Conv1D):
        return layer.nf, layer.nx  # weight stored (in, out)
    if hasattr(layer, "in_features") and hasattr(layer, "out_features"):
        return layer.out_features, layer.in_features
    return ()
