"""`oloraplus compose-study SPEC.yaml --output DIR`: do summed domain adapters match training on the merged data?

Cao, Truong & Lizarraga ("Efficient Modular Learning through Naive LoRA Summation") train one LoRA per
domain, add them (ΔW = Σ_i ΔW_i) and compare with one LoRA trained on the merged data; the perplexity
a pairwise sum loses grew roughly linearly with the RMS over layers of cos(ΔW_i, ΔW_j).

    base:     {option: value}    any `train` option shared by every training (not data/output/...)
    domains:  {name: SOURCE}     or {name: {data: SOURCE, train_size: N, eval_size: N}}; at least two
    merged:   {option: value}    training length/optimiser overrides for the merged-data runs only
    baseline: all | per_sum      one merged run on all domains (default), or one per evaluated sum

Every training is an ordinary `train(cfg)` run in DIR/runs/<name>. A domain run reads its own source
with the study's train_size/eval_size/seed, so the recipe's split is the study's split. A merged run
reads DIR/data/merged-<digest>.jsonl, laid out so the recipe's seeded split returns exactly the shuffled
union of the domain train splits for training and the union of the held-out sets for its eval.
Finished runs whose recorded config matches are skipped; one with another config is refused.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from oloraplus import rundir
from oloraplus.compose.study_fit import compare, fit_line, plot_scatter
from oloraplus.compose.study_plan import Training, check_merged_file, is_finished, merged_split, plan_trainings
from oloraplus.compose.study_report import report_markdown
from oloraplus.compose.study_spec import MERGED, StudySpec, label, read_spec, sums
from oloraplus.config import TrainConfig, build_config
from oloraplus.data.example import Document
from oloraplus.data.formats import load_examples
from oloraplus.data.split import split_examples
from oloraplus.errors import DataError
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.executors import EXECUTOR_DIR, run_jobs
from oloraplus.experiments.sweeplock import LOCK_FILE, sweep_lock
from oloraplus.experiments.worker import Job, train_once
from oloraplus.io import atomic_write_text
from oloraplus.paths import portable_path


def _write_sum(output: Path, subset: tuple[str, ...]) -> Path:
    from oloraplus.adapters.adapter_dir import read_adapter
    from oloraplus.compose.sum import sum_adapters, write_adapter

    adapters = [read_adapter(output / "runs" / name) for name in subset]
    config, tensors = sum_adapters(adapters)  # ΔW = Σ_i ΔW_i (Cao et al.'s naive sum)
    target = output / "sums" / label(subset)
    shutil.rmtree(target, ignore_errors=True)  # derived from the runs: rebuilt on every study
    meta = {"base_fingerprint": adapters[0].fingerprint, "base_model": adapters[0].base_model, "method": "compose"}
    return write_adapter(config, tensors, target, meta=meta)


def _train_missing(spec: StudySpec, splits: dict, trainings: list[Training], done: list[bool],
                   files: dict[str, str], tokenizer, output: Path, executor: ExecutorConfig | None) -> None:
    """Write the merged data (checked against the domain records) and train every run not finished earlier."""
    seed = build_config(TrainConfig, spec.base, spec.source).seed
    for file, text in files.items():
        if not Path(file).is_file():
            atomic_write_text(file, text)
    for run in trainings[len(spec.domains):]:
        check_merged_file(Path(run.config.data), *merged_split(splits, run.domains, seed), seed, tokenizer)
    jobs = []
    for index, (run, finished) in enumerate(zip(trainings, done), start=1):
        name = f"[{index}/{len(trainings)}] train {run.name} on {label(run.domains)}"
        if finished:
            print(f"{name}  (finished earlier, skipped)", file=sys.stderr, flush=True)
        else:
            jobs.append(Job(run.name, name, functools.partial(train_once, run.config)))
    run_jobs(jobs, executor or ExecutorConfig(), output / EXECUTOR_DIR)


def _evaluate_variants(loaded, variants: dict[str, Path | None], heldout: dict, batch_size: int) -> dict:
    """{variant: {domain: loss}}: the base loaded once, each adapter put on and taken off again."""
    from oloraplus.adapters.export import load_adapter
    from oloraplus.data.collate import CausalLMCollator
    from oloraplus.eval.loss import evaluate_loss

    collator = CausalLMCollator(pad_token_id=loaded.tokenizer.pad_token_id)
    base, ppl = loaded.model, {}
    for variant, adapter in variants.items():
        print(f"evaluate {variant} on {', '.join(heldout)}", file=sys.stderr, flush=True)
        model = load_adapter(base, adapter) if adapter is not None else base
        ppl[variant] = {name: evaluate_loss(model, ds, collator, batch_size=batch_size) for name, ds in heldout.items()}
        base = model.unload() if adapter is not None else base  # the untouched base weights again
    return ppl


def run_study(path: str | Path, output: str | Path, *, command: str | None = None,
              executor: ExecutorConfig | None = None) -> dict[str, Any]:
    """Train what is missing, evaluate every variant on every domain, write the study files; returns study.json."""
    spec = read_spec(path)  # spec and output are checked before torch and the data load
    output = rundir.check_output_dir(output, what="compose study",
                                     own=("study.json", f"data/{MERGED}-*.jsonl", LOCK_FILE))
    with sweep_lock(output, what="compose study"):
        return _study(spec, output, command, executor)


def _study(spec: StudySpec, output: Path, command: str | None, executor: ExecutorConfig | None) -> dict[str, Any]:

    import torch

    from oloraplus import models
    from oloraplus.compose.interference import interference, write_interference
    from oloraplus.adapters.adapter_dir import read_adapter
    from oloraplus.data.tokenize import encode_examples

    base = build_config(TrainConfig, spec.base, spec.source)
    splits = {}
    for d in spec.domains:
        try:
            examples = load_examples(d.data)
            if isinstance(examples[0], Document):  # the merged file is written as conversations
                raise DataError(f"{d.data}: plain text: the compose study needs prompt/reply records")
            splits[d.name] = split_examples(examples, d.train_size, d.eval_size, base.seed)
        except DataError as exc:
            raise DataError(f"{spec.source}: domains: {d.name}: {exc}") from None
    trainings, files = plan_trainings(spec, splits, output)
    done = [is_finished(run) for run in trainings]  # refuse a directory holding other runs before any work
    loaded = models.load_model(base.model, trust_remote_code=base.trust_remote_code)
    loaded.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    _train_missing(spec, splits, trainings, done, files, loaded.tokenizer, output, executor)

    heldout = {d: encode_examples(splits[d][1], loaded.tokenizer, base.max_length, base.train_turns)[0] for d in spec.names}
    variants: dict[str, Path | None] = {"base": None}  # label -> adapter directory
    variants.update({name: output / "runs" / name / rundir.ADAPTER_DIR for name in spec.names})
    variants.update({label(s): _write_sum(output, s) for s in sums(spec.names)})
    variants.update({run.name: Path(run.config.output) / rundir.ADAPTER_DIR for run in trainings[len(spec.domains):]})
    ppl = _evaluate_variants(loaded, variants, heldout, base.batch_size)

    diagnostic = interference([read_adapter(output / "runs" / name) for name in spec.names])
    write_interference(diagnostic, output)
    comparisons = compare(spec, ppl, diagnostic.overall.tolist())
    pairs = [row for row in comparisons if row["rms_cosine"] is not None]
    fit = fit_line([p["rms_cosine"] for p in pairs], [p["change_pct"] for p in pairs])
    result = {
        "command": command, "spec": {"source": portable_path(spec.source), "base": spec.base, "merged": spec.merged,
                                     "baseline": spec.baseline},
        "domains": {d.name: {"data": portable_path(d.data), "train_examples": len(splits[d.name][0]),
                             "heldout_examples": len(splits[d.name][1])} for d in spec.domains},
        "runs": {run.name: {"domains": list(run.domains), "metrics": rundir.read_metrics(Path(run.config.output))}
                 for run in trainings},
        "perplexity": ppl, "rms_cosine": {"adapters": diagnostic.names, "matrix": diagnostic.overall.tolist()},
        "sums": comparisons, "fit": fit,
    }
    atomic_write_text(output / "study.json", json.dumps(result, indent=2) + "\n")  # keeps the table order
    plot_scatter(pairs, fit, output / "scatter.png")
    atomic_write_text(output / "study.md", report_markdown(spec, result))
    return result
