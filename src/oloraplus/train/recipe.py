"""The whole training story in one readable function: config in, run directory out.

load model -> load/split/encode data -> seed -> attach adapter -> Trainer with the λ optimizer ->
token-weighted eval -> base-relative PEFT adapter, metrics.json, log.jsonl, config.yaml, loss.png.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback

from oloraplus import rundir
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.compat import vllm_summary, vllm_verdicts
from oloraplus.adapters.export import save_adapter
from oloraplus.adapters.quantized import requantization_metrics
from oloraplus.config import TrainConfig, report_targets, to_dict
from oloraplus.console import data_lines, is_main, plural, say, world_size
from oloraplus.data.budget import token_budget_dataset
from oloraplus.data.collate import model_inputs
from oloraplus.data.packing import batch_collator
from oloraplus.data.prepare import prepare
from oloraplus.errors import ConfigError
from oloraplus.eval.generate import generation_eval, write_generations
from oloraplus.eval.loss import evaluate_loss, validation_metrics
from oloraplus.io import append_jsonl
from oloraplus.plan import train_lines as memory_plan
from oloraplus.train import checkpoint, fsdp
from oloraplus.train.callbacks import (DiagnosticsCallback, JsonlLogCallback, PeriodicEvalCallback,
                                      keep_tensorboard_logs)
from oloraplus.train.compile import compile_layers, paused
from oloraplus.train.environment import hardware, package_versions
from oloraplus.train.plots import plot_losses
from oloraplus.train.recompute import enable_gradient_checkpointing
from oloraplus.train.trainer import NonFiniteLossError, RatioTrainer


def warmup_steps_arg(warmup_ratio: float) -> float:
    """`TrainingArguments.warmup_steps` for a warm-up *fraction*: transformers 5 has no `warmup_ratio` and reads
    a value ≥ 1 as a step count, one < 1 as ceil(value · total steps). A fraction of 1 becomes the largest float
    below 1, whose ceil(· total) is every step for any total < 2^52, counted from epochs or --max-steps."""
    return min(warmup_ratio, math.nextafter(1.0, 0.0))


def _training_arguments(cfg: TrainConfig, run: rundir.RunDir, **extra: Any) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=1 if cfg.tokens_per_batch else cfg.batch_size,  # one token-budget group
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=warmup_steps_arg(cfg.warmup_ratio),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_only_model=False,
        eval_strategy="no",
        report_to=report_targets(cfg.report_to),
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and world_size() > 1 else None,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=True,  # JsonlLogCallback draws the bar and prints the progress lines
        logging_nan_inf_filter=False,  # its isnan() is a host sync per step; RatioTrainer stops a NaN run anyway
        dataloader_pin_memory=cuda,
        accelerator_config={"non_blocking": cuda},  # batches copy to the GPU while it computes
        **extra,  # --fsdp: fsdp.training_arguments
    )


def calibration_batches(train_dataset: Any, collator: Any, batch_size: int, seed: int) -> DataLoader:
    """Training-split batches in a seeded order, collated as for training, for data-driven inits (EVA).

    Lazy: a method that ignores them costs nothing. Every process draws the same order, so every rank
    computes the same init.
    """
    return DataLoader(train_dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed),
                      collate_fn=lambda items: model_inputs(collator(items)))


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: Any  # the trained PeftModel, in memory
    tokenizer: Any
    output: Path


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune per `cfg` and write the run directory."""
    cfg.validate()
    if cfg.fsdp:
        fsdp.check_launch()
    main = is_main()
    # Only rank 0 owns the filesystem: other ranks must not race its checks against its writes.
    run = (rundir.plan_run_dir(cfg.output, overwrite=cfg.overwrite, resume=cfg.resume) if main
           else rundir.paths(cfg.output))
    if main and cfg.resume:
        rundir.check_resume_config(run, to_dict(cfg))
        if checkpoint.last_checkpoint(run.checkpoints) is None:  # starting over would silently discard the run
            raise ConfigError(f"--resume: {run.work} holds no checkpoint to resume from (it ran without "
                              "--save-steps or stopped before its first one); pass --overwrite to start over")
    for line in memory_plan(cfg):  # from the config alone: before minutes of loading
        say(line)
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    prep = prepare(cfg)
    load_s = time.perf_counter() - t0
    for line in data_lines(prep.data_stats, cfg.max_length):
        say(line)
    sharding = fsdp.training_arguments(prep.loaded.model, f"--model {cfg.model}") if cfg.fsdp else {}

    # the packing probe asks the base's attention, which no adapter changes; data-driven inits need the collator
    collator = batch_collator(prep.loaded.model, prep.loaded.tokenizer.pad_token_id, cfg.max_length, cfg.packing,
                              name=f"--model {cfg.model}")
    train_dataset = (token_budget_dataset(prep.train_dataset, cfg.tokens_per_batch, cfg.seed)
                     if cfg.tokens_per_batch else prep.train_dataset)
    set_seed(cfg.seed)  # the adapter init (random A for LoRA) depends only on the seed
    spec = AdapterSpec(method=cfg.method, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                       target_modules=cfg.target_modules or None, ohora_init=cfg.ohora_init)
    batch_size = 1 if cfg.tokens_per_batch else cfg.batch_size  # one token-budget group, as the Trainer
    model, initial = attach_adapter(prep.loaded.model, spec,
                                    calibration_batches(train_dataset, collator, batch_size, cfg.seed))
    if cfg.gradient_checkpointing:  # after the init: EVA's calibration forwards need no recompute
        enable_gradient_checkpointing(model)

    if main:
        rundir.start(run, resume=cfg.resume)
        rundir.write_config(run.work, cfg, {
            "model_path": prep.loaded.path, "base_fingerprint": prep.fingerprint, "data_stats": prep.data_stats,
            "versions": package_versions(), "hardware": hardware(),
        })
    log_path = run.work / rundir.LOG_FILE
    resume_from = None
    if cfg.resume:  # rank 0 also drops what the interrupted run wrote after its last checkpoint
        resume_from = (checkpoint.prepare_resume(run.checkpoints, log_path, run.work) if main
                       else checkpoint.last_checkpoint(run.checkpoints))
        say(f"resuming from {resume_from} (step {checkpoint.checkpoint_step(resume_from)})")

    compiled = None  # set once the Trainer's probes have run: only training steps run compiled

    def evaluate(m) -> dict:
        say(f"evaluating {plural(len(prep.eval_dataset), 'example')} ...")
        with paused(compiled):
            return evaluate_loss(m, prep.eval_dataset, collator, batch_size=cfg.batch_size)

    log = JsonlLogCallback(log_path)
    callbacks = [log]
    diagnostics = None
    if initial and cfg.diagnostics_steps >= 0:  # OLoRA/PiSSA: B_0, A_0 are meaningful, so refinement vs exploration
        diagnostics = DiagnosticsCallback({name: (f.B, f.A) for name, f in initial.items()}, log_path,
                                          every=cfg.diagnostics_steps, logging_steps=cfg.logging_steps,
                                          sharded=cfg.fsdp)
        callbacks.append(diagnostics)
    if cfg.eval_steps:
        callbacks.append(PeriodicEvalCallback(cfg.eval_steps, evaluate, log_path))
    trainer = RatioTrainer(
        model=model, args=_training_arguments(cfg, run, **sharding), train_dataset=train_dataset,
        data_collator=collator, callbacks=callbacks, ratio=cfg.ratio,
        response_only=cfg.response_only_loss,
    )
    if cfg.fsdp:
        fsdp.enable(trainer)
    trainer.remove_callback(PrinterCallback)  # the Trainer's raw dicts; JsonlLogCallback prints readable lines
    keep_tensorboard_logs(trainer, run.work / rundir.TENSORBOARD_DIR)
    if cfg.compile:
        compiled = compile_layers(model, name=f"{cfg.method} on --model {cfg.model}")
    say(f"training {cfg.method} λ={cfg.ratio:g} on {plural(len(prep.train_dataset), 'example')} ...")
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except NonFiniteLossError as exc:
        if main:
            checkpoint.write_failure(run.work, exc.record())
        raise
    finally:
        if compiled is not None:
            compiled.restore()  # evaluation, generation and saving see the plain model
    compile_s = compiled.compile_s() if compiled is not None else 0.0
    if compiled is not None:
        say(compiled.summary())
    final_eval = evaluate(model)
    if prep.val_dataset is not None:  # --val-size: the loss settings are chosen on (sweep select:, tune-ratio)
        say(f"validating on {plural(len(prep.val_dataset), 'example')} ...")
        final_eval.update(validation_metrics(evaluate_loss(model, prep.val_dataset, collator, cfg.batch_size)))
    state = trainer.state
    generations: list = []
    if cfg.eval_generate:
        say(f"generating {min(cfg.eval_generate, len(prep.eval_examples))} responses ...")
        gen_metrics, generations = generation_eval(model, prep.loaded.tokenizer, prep.eval_examples,
                                                   cfg.eval_generate, cfg.max_new_tokens,
                                                   cfg.generate_batch_size)
        final_eval.update(gen_metrics)

    train_logs = [r for r in state.log_history if "loss" in r]
    runtime = result.metrics["train_runtime"]  # this session's (a resumed run: since the resume)
    steady = max(runtime - compile_s, 1e-9)  # throughput without the time spent compiling (in the first steps)
    metrics = {
        "method": cfg.method,
        "ratio": cfg.ratio,
        "steps": state.global_step,
        "train_loss": result.training_loss,  # the mean over every step of the run, resumed ones included
        "last_logged_loss": train_logs[-1]["loss"] if train_logs else None,
        **final_eval,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "train_tokens": int(state.num_input_tokens_seen),
        "train_runtime_s": runtime,
        "tokens_per_s": (state.num_input_tokens_seen - log.start_tokens) / steady,
        "seconds_per_step": steady / max(state.global_step - log.start_step, 1),
        "compile_s": compile_s,
        "compiled": compiled is not None and compiled.failure is None,
        "compile_graphs": compiled.graphs() if compiled is not None else 0,
        "resumed_from_step": log.start_step,
        "load_s": load_s,
        "packing": collator.packing,
        **prep.data_stats,
        **(diagnostics.summary() if diagnostics else {}),  # their cost: calls, seconds, share of the loop
        **requantization_metrics(model, cfg.quantize),  # --quantize: ε of the re-quantized residuals
    }
    gathered = fsdp.gathered_adapter(model) if cfg.fsdp else None  # a collective: every rank takes part
    if main:
        append_jsonl(log_path, {"step": state.global_step, "epoch": state.epoch,
                                "eval_loss": final_eval["eval_loss"], "perplexity": final_eval["perplexity"]})
        save_adapter(model, run.work / rundir.ADAPTER_DIR, initial, state_dict=gathered, extra_metadata={
            "base_fingerprint": prep.fingerprint, "base_model": cfg.model, "method": cfg.method,
            "rank": cfg.rank, "alpha": cfg.alpha, **({"quantize": cfg.quantize} if cfg.quantize != "none" else {}),
        })
        if generations:
            write_generations(run.work / rundir.GENERATIONS_FILE, generations)
        rundir.write_metrics(run.work, metrics)
        plot_losses(log_path, run.work / rundir.LOSS_PLOT, title=f"{cfg.method} λ={cfg.ratio:g} r={cfg.rank}")
        rundir.finish(run)
        say(vllm_summary(vllm_verdicts(run.final / rundir.ADAPTER_DIR)))  # informs, never fails
    return TrainResult(metrics=metrics, model=model, tokenizer=prep.loaded.tokenizer, output=run.final)
