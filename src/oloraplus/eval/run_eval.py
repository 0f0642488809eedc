"""`oloraplus eval RUN_DIR`: token-weighted eval loss and BLEU/ROUGE on generated responses of a finished run.

It reloads the saved adapter onto the untouched base, exactly as a user of the adapter would, and merges the
scores into the run's metrics.json.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from oloraplus import rundir
from oloraplus.console import data_lines, plural, say
from oloraplus.errors import AdapterError


def check_base(run_dir: Path, fingerprint: str, model: str) -> None:
    """An adapter on another base model gives plausible-looking garbage: refuse it."""
    check_adapter_base(run_dir / rundir.ADAPTER_DIR, fingerprint, model)


def check_adapter_base(adapter: Path, fingerprint: str, model: str) -> None:
    """`check_base` for an adapter directory (`oloraplus.api.load_adapter` too): refuse one whose recorded base
    fingerprint differs from `fingerprint`, the base it is about to load onto (named `model`)."""
    from oloraplus.adapters.export import load_metadata

    recorded = (load_metadata(adapter) or {}).get("base_fingerprint")
    if recorded and recorded != fingerprint:
        raise AdapterError(f"{adapter}: trained on another base model (base fingerprint {recorded} "
                           f"!= {fingerprint} of --model {model})")


def evaluate_run(run_dir: str | Path, *, data: str | None = None, generate: int = 0, max_new_tokens: int = 128,
                 batch_size: int | None = None, generate_batch_size: int | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Reload base + adapter, evaluate on the run's eval split (or `data`), merge into metrics.json.

    `device`: as `models.pick_device` (default: the GPU when there is one).
    """
    run_dir = Path(run_dir)
    cfg = rundir.load_run_config(run_dir)  # a wrong path fails before torch and the model load

    from oloraplus.adapters.export import load_adapter
    from oloraplus.data.packing import batch_collator
    from oloraplus.data.prepare import prepare
    from oloraplus.eval.generate import generation_eval, write_generations
    from oloraplus.eval.loss import evaluate_loss
    from oloraplus.models import pick_device

    if data is not None:  # all of the given data is eval data (capped by eval_size)
        cfg = replace(cfg, data=data, train_size=1, eval_size=cfg.eval_size)
    prep = prepare(replace(cfg, eval_generate=generate), device=pick_device(device), training=False,
                   generate_flag="--generate")
    eval_stats = {k: v for k, v in prep.data_stats.items() if k.startswith("eval_") or k in ("examples_available", "plain_text")}
    say(data_lines(eval_stats, cfg.max_length, splits=("eval",))[0])
    check_base(run_dir, prep.fingerprint, cfg.model)
    model = load_adapter(prep.loaded.model, run_dir / rundir.ADAPTER_DIR).eval()
    batch = batch_size or cfg.batch_size
    collator = batch_collator(model, prep.loaded.tokenizer.pad_token_id, cfg.max_length, cfg.packing)
    say(f"evaluating {plural(len(prep.eval_dataset), 'example')} ...")
    metrics: dict[str, Any] = dict(evaluate_loss(model, prep.eval_dataset, collator, batch_size=batch))
    metrics.update(eval_stats)
    if generate:
        say(f"generating {min(generate, len(prep.eval_examples))} responses ...")
        gen_metrics, rows = generation_eval(model, prep.loaded.tokenizer, prep.eval_examples, generate,
                                            max_new_tokens, generate_batch_size or cfg.generate_batch_size)
        metrics.update(gen_metrics)
        write_generations(run_dir / rundir.GENERATIONS_FILE, rows)
    rundir.update_metrics(run_dir, metrics if data is None else {f"eval:{data}": metrics})
    return metrics
