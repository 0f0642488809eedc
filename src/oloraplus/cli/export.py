"""`oloraplus export RUN_DIR`: the trained adapter in the form a serving stack loads.

RUN_DIR: a run, or any PEFT LoRA adapter directory (composed, plain PEFT); its base: the one it records, or --model.

--format merged     a plain HF model with the adapter folded in (what `oloraplus merge` writes)
--format gguf-lora  a llama.cpp LoRA adapter GGUF (`llama-cli -m base.gguf --lora F.gguf`)
--check vllm        will vLLM load RUN_DIR/adapter? one line per rule of vLLM's PEFTHelper
"""

from __future__ import annotations

import argparse

from oloraplus.adapters.adapter_dir import add_model_argument
from oloraplus.errors import ConfigError

FORMATS = ("merged", "gguf-lora")
CHECKS = ("vllm",)


def export_command(args: argparse.Namespace) -> int:
    if (args.format is None) == (args.check is None):
        raise ConfigError("export: give exactly one of --format FORMAT or --check vllm")
    if args.check is not None:
        from oloraplus.adapters.compat import format_verdicts, vllm_verdicts

        verdicts = vllm_verdicts(args.run_dir)
        print(format_verdicts(verdicts))
        return 0 if all(ok for _, ok, _ in verdicts) else 1
    if args.output is None:
        raise ConfigError(f"export --format {args.format}: --output is required")
    if args.format == "merged":
        from oloraplus.adapters.merge import merge_run

        print(f"merged model written to {merge_run(args.run_dir, args.output, args.model)}")
        return 0
    from oloraplus.adapters.gguf_lora import export_gguf_lora

    written = export_gguf_lora(args.run_dir, args.output, overwrite=args.overwrite, model=args.model)
    print(f"llama.cpp LoRA adapter written to {written}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run, or any PEFT LoRA adapter directory")
    add_model_argument(parser)
    parser.add_argument("--format", choices=FORMATS, default=None)
    parser.add_argument("--check", choices=CHECKS, default=None, help="exit 1 when a rule fails")
    parser.add_argument("--output", default=None, metavar="PATH", help="directory (merged) or .gguf file (gguf-lora)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output .gguf file")
