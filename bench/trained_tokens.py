"""How many tokens carry loss per record under --train-turns last vs all (issue 21): counts, not timings.

    python bench/trained_tokens.py --data-dir ../shared/data --out bench/trained_tokens.md

Uses only SmolLM2-135M-Instruct's tokenizer (no model forward), so it runs in seconds on any machine.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from oloraplus.data.formats import load_examples
from oloraplus.data.tokenize import IGNORE_INDEX, encode_examples
from oloraplus.data.turns import trained_turns
from oloraplus.models import resolve_model_path

FILES = ("glaive_toolcall_en_demo.json", "alpaca_en_demo.json")
MAX_LENGTH = 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
    rows = ["| file | --train-turns | records used | trained tokens per record (median / mean / min) | share of all "
            "tokens | tool-call turns trained |", "|---|---|---|---|---|---|"]
    for name in FILES:
        examples = load_examples(str(args.data_dir / name))
        for turns in ("last", "all"):
            dataset, _ = encode_examples(examples, tokenizer, MAX_LENGTH, turns)
            trained = [sum(t != IGNORE_INDEX for t in labels) for labels in dataset["labels"]]
            share = sum(trained) / sum(len(ids) for ids in dataset["input_ids"])
            calls = sum(1 for ex in examples for i in trained_turns(ex, turns) if i in ex.tool_calls)
            total_calls = sum(len(ex.tool_calls) for ex in examples)
            rows.append(f"| {name} | {turns} | {len(dataset)} of {len(examples)} | {statistics.median(trained):g} / "
                        f"{statistics.mean(trained):.1f} / {min(trained)} | {share:.1%} | {calls} of {total_calls} |")
    text = ("# Trained tokens per record: --train-turns last vs all\n\n"
            f"SmolLM2-135M-Instruct tokenizer, --max-length {MAX_LENGTH}; counts are deterministic (no timing). "
            f"Command: `python bench/trained_tokens.py --data-dir ../shared/data --out {args.out}`.\n\n"
            + "\n".join(rows) + "\n")
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
