"""Evaluate a run: token-weighted eval loss and BLEU/ROUGE on generated responses.

Used at the end of `train --eval-generate N` and by `oloraplus eval RUN_DIR` (which reloads the
saved adapter onto the untouched base, exactly as a user of the adapter would).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from oloraplus.console import data_lines, say
from oloraplus.data.prompts import render_prompt
from oloraplus.errors import AdapterError
from oloraplus.io import atomic_write_json, atomic_write_text
from oloraplus.train.rundir import ADAPTER_DIR, load_run_config


def generation_eval(model, tokenizer, examples: Sequence, n: int, max_new_tokens: int, batch_size: int,
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy-generate for the first n eval examples; corpus BLEU, ROUGE-1/2/L and per-example rows."""
    from oloraplus.eval.generate import generate_batched  # torch: imported once a run directory checked out
    from oloraplus.eval.textmetrics import generation_metrics, per_example_scores

    chosen = list(examples)[:n]
    prompts = [render_prompt(tokenizer, ex) for ex in chosen]
    references = [ex.response for ex in chosen]
    generations = generate_batched(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics = generation_metrics(generations, references)
    scores = per_example_scores(generations, references)
    rows = [{"index": i, "prompt": p, "reference": r, "generation": g, **s}
            for i, (p, r, g, s) in enumerate(zip(prompts, references, generations, scores))]
    return {**metrics, "generated_examples": len(chosen)}, rows


def write_generations(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_base(run_dir: Path, fingerprint: str, model: str) -> None:
    """An adapter on another base model gives plausible-looking garbage: refuse it."""
    from oloraplus.adapters.export import load_metadata

    recorded = (load_metadata(run_dir / ADAPTER_DIR) or {}).get("base_fingerprint")
    if recorded and recorded != fingerprint:
        raise AdapterError(f"{run_dir / ADAPTER_DIR}: trained on another base model (base fingerprint {recorded} "
                           f"!= {fingerprint} of --model {model})")


def evaluate_run(run_dir: str | Path, *, data: str | None = None, generate: int = 0, max_new_tokens: int = 128,
                 batch_size: int | None = None, generate_batch_size: int | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Reload base + adapter, evaluate on the run's eval split (or `data`), merge into metrics.json.

    `device`: as `models.pick_device` (default: the GPU when there is one).
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)  # a wrong path fails before torch and the model load

    from oloraplus.adapters.export import load_adapter
    from oloraplus.train.packing import batch_collator
    from oloraplus.eval.loss import evaluate_loss
    from oloraplus.models import pick_device
    from oloraplus.train.recipe import prepare

    if data is not None:  # all of the given data is eval data (capped by eval_size)
        cfg = replace(cfg, data=data, train_size=1, eval_size=cfg.eval_size)
    prep = prepare(cfg, device=pick_device(device))
    eval_stats = {k: v for k, v in prep.data_stats.items() if k.startswith("eval_") or k == "examples_available"}
    say(data_lines(eval_stats, cfg.max_length, splits=("eval",))[0])
    check_base(run_dir, prep.fingerprint, cfg.model)
    model = load_adapter(prep.loaded.model, run_dir / ADAPTER_DIR).eval()
    batch = batch_size or cfg.batch_size
    collator = batch_collator(model, prep.loaded.tokenizer.pad_token_id, cfg.max_length, cfg.packing)
    say(f"evaluating {len(prep.eval_dataset)} examples ...")
    metrics: dict[str, Any] = dict(evaluate_loss(model, prep.eval_dataset, collator, batch_size=batch))
    metrics.update(eval_stats)
    if generate:
        say(f"generating {min(generate, len(prep.eval_examples))} responses ...")
        gen_metrics, rows = generation_eval(model, prep.loaded.tokenizer, prep.eval_examples, generate,
                                            max_new_tokens, generate_batch_size or cfg.generate_batch_size)
        metrics.update(gen_metrics)
        write_generations(run_dir / "generations.jsonl", rows)
    metrics_path = run_dir / "metrics.json"
    stored = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    key = "eval" if data is None else f"eval:{data}"
    if data is None:
        stored.update(metrics)
    else:
        stored[key] = metrics
    atomic_write_json(metrics_path, stored)
    return metrics
