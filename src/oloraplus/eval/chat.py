"""`oloraplus generate RUN_DIR`: ask the trained model (or its untouched base) something.

RUN_DIR may also be any PEFT LoRA adapter directory (a composed one, one saved by plain PEFT): its base is the one
adapter_config.json names, or `--model`.

The prompt is rendered exactly as in training and evaluation (`render_prompt`: the model's chat
template, else the Alpaca template), so the adapter is asked the way it was taught. Greedy by
default, which gives the same text as `oloraplus eval`'s batched generation; `--temperature > 0`
samples (reproducibly with `--seed`). A single prompt is streamed to the terminal as it is decoded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oloraplus.adapters.adapter_dir import add_model_argument
from oloraplus.data.example import Example
from oloraplus.data.prompts import render_prompt
from oloraplus.errors import ConfigError, DataError


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token: temperature 0 is greedy (then top_p and seed do not matter)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def validate(self) -> "Sampling":
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"--temperature: must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"--top-p: must be in (0, 1], got {self.top_p}")
        return self


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line, or (`.jsonl`/`.json` files) JSON Lines records with a `prompt` string."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--prompts {path}: cannot read: {exc}") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix.lower() not in (".jsonl", ".json"):
            prompts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: invalid JSON: {exc.msg}") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{path}: line {number}: field 'prompt': expected a non-empty string")
        prompts.append(prompt)
    if not prompts:
        raise DataError(f"--prompts {path}: no prompts (empty file)")
    return prompts


def chat_prompt(tokenizer, text: str) -> str:
    """A one-turn user message rendered as training rendered prompts, ending where the reply starts."""
    return render_prompt(tokenizer, Example(messages=(("user", text), ("assistant", ""))))


def load_for_generation(run_dir: str | Path, *, base_only: bool = False, device: str | None = None,
                        model: str | None = None):
    """(model, tokenizer): the base model with the run's (or adapter directory's) adapter, or untouched
    (`base_only`), in eval mode. `model`: `--model`, the base to load instead of the recorded one."""
    from oloraplus import models
    from oloraplus.adapters.adapter_dir import adapter_source, check_base
    from oloraplus.adapters.export import load_adapter
    from oloraplus.rundir import load_run_config

    source = adapter_source(run_dir, model)
    cfg = load_run_config(source.run_dir) if source.run_dir is not None else None
    loaded = models.load_model(source.base_model, trust_remote_code=bool(cfg and cfg.trust_remote_code),
                               device=models.pick_device(device), quantize=cfg.quantize if cfg else "none")
    base = loaded.model
    if not base_only:
        check_base(base, source, models.base_fingerprint(base))
        base = load_adapter(base, source.path)
    return base.eval(), loaded.tokenizer


def complete_text_streamer(tokenizer):
    """transformers' TextStreamer (prints the reply as it decodes, prompt skipped), whose last flush drops a
    character the token limit cut in half, as `decode_new` does for the returned text. Defined on first use: the
    CLI imports this module, and transformers takes seconds to import."""
    from transformers import TextStreamer

    from oloraplus.eval.generate import trim_cut_character

    class CompleteTextStreamer(TextStreamer):
        def end(self) -> None:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs) if self.token_cache else ""
            text = trim_cut_character(self.tokenizer, self.token_cache, text)
            printable, self.token_cache, self.print_len = text[self.print_len:], [], 0
            self.next_tokens_are_prompt = True
            self.on_finalized_text(printable, stream_end=True)

    return CompleteTextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_one(model, tokenizer, prompt: str, sampling: Sampling, streamer: Any = None) -> str:
    """One rendered prompt → the reply (decoded without the prompt, cut at the first end token)."""
    import torch
    from transformers import set_seed

    from oloraplus.eval.generate import decode_new, eos_token_ids, needs_special_tokens

    eos_ids = eos_token_ids(model, tokenizer)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=needs_special_tokens(tokenizer))
    encoded = encoded.to(next(model.parameters()).device)
    options: dict[str, Any] = {"do_sample": False, "num_beams": 1}
    if sampling.temperature > 0:
        options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if sampling.seed is not None:
            set_seed(sampling.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
    with torch.inference_mode():
        out = model.generate(**encoded, **options, max_new_tokens=sampling.max_new_tokens, use_cache=True,
                             eos_token_id=eos_ids or None, pad_token_id=pad_id, streamer=streamer)
    return decode_new(tokenizer, out[0, encoded["input_ids"].shape[1]:], eos_ids)


def generate_replies(model, tokenizer, texts: list[str], sampling: Sampling, stream: bool = False) -> list[str]:
    """Replies to user messages `texts`; greedy lists are decoded in batches, like `oloraplus eval`."""
    from oloraplus.eval.generate import generate_batched

    prompts = [chat_prompt(tokenizer, t) for t in texts]
    if sampling.temperature == 0 and not stream:
        return generate_batched(model, tokenizer, prompts, max_new_tokens=sampling.max_new_tokens)
    streamer = complete_text_streamer(tokenizer) if stream else None
    return [generate_one(model, tokenizer, p, sampling, streamer) for p in prompts]


def generate_command(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.prompts is None):
        raise ConfigError("generate: give exactly one of --prompt TEXT or --prompts FILE")
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError("--prompt: empty prompt")
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed).validate()
    texts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    model, tokenizer = load_for_generation(args.run_dir, base_only=args.base_only, device=args.device,
                                           model=args.model)
    if args.prompt is not None:  # the streamer prints the reply as it is decoded
        generate_replies(model, tokenizer, texts, sampling, stream=True)
        return 0
    for text, reply in zip(texts, generate_replies(model, tokenizer, texts, sampling)):
        print(json.dumps({"prompt": text, "response": reply}, ensure_ascii=False), flush=True)
    return 0


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run, or any PEFT LoRA adapter directory")
    add_model_argument(parser)
    parser.add_argument("--prompt", default=None, metavar="TEXT", help="one user message; the reply is streamed")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="one prompt per line, or JSON Lines (.jsonl) records with a 'prompt' field")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="K", help="at most K new tokens (256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (1.0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible replies)")
    parser.add_argument("--base-only", action="store_true", help="the untouched base model, without the adapter")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
