"""`oloraplus eval RUN_DIR`: token-weighted eval loss and BLEU/ROUGE on generated responses of a finished run.

It reloads the saved adapter onto the untouched base, exactly as a user of the adapter would. Scores of the
run's own eval split merge into the run's metrics.json; scores of other data (`--data F`) never touch the run:
they go to a directory of their own (`--output DIR`: eval.json, generations.jsonl), so a later `report` still
reads the run's own generations. `--eval-size all` scores every example of F, in file order. Any other PEFT
LoRA adapter directory (composed, trained by plain PEFT) is evaluated the same way on `--data`, with the default
options; nothing is written into it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from oloraplus import rundir
from oloraplus.console import data_lines, plural, say
from oloraplus.config import TrainConfig
from oloraplus.errors import ConfigError
from oloraplus.io import atomic_write_json

EVAL_FILE = "eval.json"
ALL = "all"


def parse_eval_size(text: str | None) -> int | str | None:
    """`--eval-size N` (N >= 1) or `all`; None: the run's recorded eval size."""
    if text is None or text == ALL:
        return text
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigError(f"--eval-size: expected a number of examples >= 1 or 'all', got {text!r}")
    return size


def check_eval_output(run_dir: Path, data: str | None, output: str | None, eval_size: int | str | None) -> Path | None:
    """Where the scores go (None: into the run's metrics.json), refused before the model loads."""
    if eval_size is not None and data is None:
        raise ConfigError("--eval-size: only with --data (the run's own eval split keeps its recorded size)")
    if output is None:
        if data is not None:
            raise ConfigError(f"--data: also pass --output DIR (eval --data never writes into {run_dir})")
        return None
    return rundir.check_output_dir(output, what="evaluation", own=(EVAL_FILE,))


def evaluate_run(run_dir: str | Path, *, data: str | None = None, generate: int = 0, max_new_tokens: int = 128,
                 batch_size: int | None = None, generate_batch_size: int | None = None,
                 device: str | None = None, output: str | None = None, eval_size: int | str | None = None,
                 model: str | None = None) -> dict[str, Any]:
    """Reload base + adapter and evaluate on the run's eval split or on `data`.

    The run's own split: merged into the run's metrics.json (or written to `output`). `data`: written to
    `output` only (required). `eval_size`: examples of `data` (seeded as the run's split), or 'all' (every one,
    in file order). `device`: as `models.pick_device` (default: the GPU when there is one). `model`: `--model`,
    the base to load instead of the recorded one. An adapter directory that is not a run needs `data`.
    """
    from oloraplus.adapters.adapter_dir import adapter_source, check_base

    source = adapter_source(run_dir, model)  # a wrong path fails before torch and the model load
    cfg = eval_config(source, data)
    target = check_eval_output(Path(run_dir), data, output, eval_size)
    run_dir = source.run_dir

    from oloraplus.adapters.export import load_adapter
    from oloraplus.data.packing import batch_collator
    from oloraplus.data.prepare import prepare
    from oloraplus.eval.generate import generation_eval, write_generations
    from oloraplus.eval.loss import evaluate_loss
    from oloraplus.models import pick_device

    if data is not None:  # all of the given data is eval data (capped by the eval size), no validation split
        size = eval_size if isinstance(eval_size, int) else cfg.eval_size
        cfg = replace(cfg, data=data, train_size=1, eval_size=size, val_size=0)
    prep = prepare(replace(cfg, eval_generate=generate), device=pick_device(device), training=False,
                   generate_flag="--generate", eval_all=eval_size == ALL)
    eval_stats = {k: v for k, v in prep.data_stats.items() if k.startswith("eval_") or k in ("examples_available", "plain_text")}
    say(data_lines(eval_stats, cfg.max_length, splits=("eval",))[0])
    check_base(prep.loaded.model, source, prep.fingerprint)
    model = load_adapter(prep.loaded.model, source.path).eval()
    batch = batch_size or cfg.batch_size
    collator = batch_collator(model, prep.loaded.tokenizer.pad_token_id, cfg.max_length, cfg.packing)
    say(f"evaluating {plural(len(prep.eval_dataset), 'example')} ...")
    metrics: dict[str, Any] = dict(evaluate_loss(model, prep.eval_dataset, collator, batch_size=batch))
    metrics.update(eval_stats)
    rows: list = []
    if generate:
        say(f"generating {min(generate, len(prep.eval_examples))} responses ...")
        gen_metrics, rows = generation_eval(model, prep.loaded.tokenizer, prep.eval_examples, generate,
                                            max_new_tokens, generate_batch_size or cfg.generate_batch_size)
        metrics.update(gen_metrics)
    if target is None:
        if rows:
            write_generations(run_dir / rundir.GENERATIONS_FILE, rows)
        rundir.update_metrics(run_dir, metrics)
        return metrics
    target.mkdir(parents=True, exist_ok=True)
    if rows:
        write_generations(target / rundir.GENERATIONS_FILE, rows)
    atomic_write_json(target / EVAL_FILE, {"run": str(run_dir or source.path), "data": data if data is not None else cfg.data,
                                           "eval_size": eval_size if eval_size is not None else cfg.eval_examples(),
                                           **metrics})
    return metrics


def eval_config(source, data: str | None) -> TrainConfig:
    """A run's recorded options (its base replaced by --model); for a bare adapter, the defaults on `data`."""
    if source.run_dir is not None:
        return replace(rundir.load_run_config(source.run_dir), model=source.base_model)
    if data is None:
        raise ConfigError(f"eval {source.path}: not an oloraplus run, so there is no eval split; pass --data FILE")
    from oloraplus.data.prepare import model_positions
    from oloraplus.models import model_config

    positions = model_positions(model_config(source.base_model))  # the default 512 may be more than it has
    return TrainConfig(model=source.base_model, data=data,
                       max_length=min(TrainConfig.max_length, positions or TrainConfig.max_length))
