"""Will vLLM serve this adapter? The rules of vLLM's `vllm/lora/peft_helper.py`, checked offline.

vLLM reads `adapter_config.json` into its PEFTHelper and refuses, at load time on the GPU server,
what it cannot compute: DoRA, trained biases, `modules_to_save`, inits that rewrite the base
weights (OLoRA, PiSSA, ...), and a rank above `--max-lora-rank` (default 16, one of a fixed list).
Checking here turns a failed deployment into one line per rule before anything is copied.

OLoRA and PiSSA train on a shifted base, so their raw factors are wrong on the served model;
oloraplus saves them as the exact base-relative LoRA of rank 2r with `init_lora_weights: true`,
which is why they load on the untouched base in vLLM as in PEFT (and why the rank to serve is 2r).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oloraplus.adapters.files import CONFIG_FILE, WEIGHTS_FILE
from oloraplus.adapters.adapter_dir import read_config, resolve_adapter_dir

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py: MaxLoRARanks
VLLM_DEFAULT_MAX_LORA_RANK = 16
# inits that only set the starting factors, so the saved adapter is a plain LoRA (vLLM's list)
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# PEFT features that change what the adapter computes and that vLLM does not implement
UNSUPPORTED_FEATURES = {
    "lora_bias": "LoRA bias", "alora_invocation_tokens": "Activated LoRA (aLoRA)",
    "layer_replication": "layer_replication", "use_bdlora": "block-diagonal LoRA", "use_qalora": "QALoRA",
}

Verdict = tuple[str, bool, str]  # (rule, ok, one-line reason)


def max_lora_rank_flag(rank: int) -> int | None:
    """The smallest `--max-lora-rank` choice that admits `rank`; None above the largest."""
    return next((choice for choice in MAX_LORA_RANKS if choice >= rank), None)


def _rank(config: dict[str, Any]) -> Verdict:
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        return "rank", False, f"r and rank_pattern must be positive integers, got {ranks}"
    rank = max(ranks)
    flag = max_lora_rank_flag(rank)
    if flag is None:
        return "rank", False, f"rank {rank} is above vLLM's largest --max-lora-rank {MAX_LORA_RANKS[-1]}"
    default = "" if flag > VLLM_DEFAULT_MAX_LORA_RANK else f" (the default {VLLM_DEFAULT_MAX_LORA_RANK} is enough)"
    return "rank", True, f"rank {rank}: serve with --max-lora-rank {flag}{default}"


def _init(config: dict[str, Any]) -> Verdict:
    init = config.get("init_lora_weights", True)
    if not isinstance(init, str) or init.lower() in PLAIN_INITS:
        return "init", True, (f"init_lora_weights {json.dumps(init)}: the factors are relative to the untouched "
                              "base (oloraplus saves OLoRA/PiSSA as the base-relative rank-2r LoRA)")
    return "init", False, (f"init_lora_weights {init!r} rewrites the base weights when loaded; vLLM refuses it "
                           "(save with oloraplus, which writes the base-relative rank-2r LoRA)")


def vllm_verdicts(adapter_dir: str | Path) -> list[Verdict]:
    """One (rule, ok, reason) per rule of vLLM's PEFTHelper; every ok means vLLM will load the adapter."""
    path = resolve_adapter_dir(adapter_dir)
    config = read_config(path)
    peft_type = config.get("peft_type")
    verdicts: list[Verdict] = [(
        "peft_type", peft_type == "LORA",
        "LORA" if peft_type == "LORA" else f"{peft_type}: vLLM serves only LoRA adapters (merge it instead: "
        "oloraplus export RUN_DIR --format merged)")]
    missing = [key for key in ("r", "lora_alpha", "target_modules") if config.get(key) in (None, "", [])]
    verdicts.append(("required", not missing, f"missing {', '.join(missing)}" if missing
                     else "r, lora_alpha and target_modules are set"))
    if peft_type != "LORA" or missing:
        return verdicts  # the other rules read LoRA fields
    verdicts.append(_rank(config))
    dora = bool(config.get("use_dora"))
    verdicts.append(("dora", not dora, "DoRA: vLLM does not support it (merge it instead)" if dora else "no DoRA"))
    saved = config.get("modules_to_save") or []
    verdicts.append(("modules_to_save", not saved, f"modules_to_save {saved}: vLLM supports none for causal LMs"
                     if saved else "none"))
    bias = config.get("bias", "none")
    verdicts.append(("bias", bias == "none", f"bias {bias!r}: vLLM supports only 'none'" if bias != "none"
                     else "bias 'none'"))
    used = [name for key, name in UNSUPPORTED_FEATURES.items() if config.get(key)]
    verdicts.append(("features", not used, f"not supported by vLLM: {', '.join(used)}" if used
                     else "no aLoRA, LoRA bias, layer replication, BD-LoRA or QALoRA"))
    verdicts.append(_init(config))
    patterns = bool(config.get("rank_pattern") or config.get("alpha_pattern"))
    verdicts.append(("patterns", not patterns, "rank_pattern/alpha_pattern: only recent vLLM reads them; older "
                     "releases scale every layer by lora_alpha/r" if patterns else "one rank and alpha for all layers"))
    scale = "lora_alpha/sqrt(r) (rsLoRA, read by vLLM)" if config.get("use_rslora") else "lora_alpha/r"
    verdicts.append(("scaling", True, scale))
    weights = (path / WEIGHTS_FILE).is_file()
    verdicts.append(("weights", weights, WEIGHTS_FILE if weights else f"no {WEIGHTS_FILE} next to {CONFIG_FILE}"))
    return verdicts


def format_verdicts(verdicts: list[Verdict]) -> str:
    return "\n".join(f"{'ok  ' if ok else 'FAIL'}  {rule}: {reason}" for rule, ok, reason in verdicts)


def vllm_summary(verdicts: list[Verdict]) -> str:
    """One line for the end of `train`: does vLLM serve this adapter as saved, and if not, why."""
    failed = [f"{rule}: {reason}" for rule, ok, reason in verdicts if not ok]
    if failed:
        return "vLLM: would refuse this adapter (" + "; ".join(failed) + "); oloraplus export RUN --check vllm"
    rank = next((reason for rule, _, reason in verdicts if rule == "rank"), "")
    return f"vLLM: serves this adapter as saved ({rank})"
