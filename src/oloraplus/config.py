"""One definition per option: a dataclass field gives the CLI flag, the YAML key, the type and the help.

Precedence: field default < YAML file (`--config`) < command-line flag. The resolved config is
written next to every result (`config.yaml`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oloraplus.adapters import registry
from oloraplus.errors import ConfigError, OloraError
from oloraplus.quantize import check_quantize

METHODS = registry.names()  # each registered by its module in oloraplus.adapters.methods
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OHORA_INITS = ("ranked", "paper")  # how OHoRA cuts R1, R2 from R (adapters/ohora.py)
QUANTIZE = ("none", "nf4", "fp4", "int8")  # bitsandbytes formats of the frozen base (--quantize)
TRAIN_TURNS = ("all", "last")  # which assistant turns carry loss (data/turns.py)
DEFAULT_EVAL_SIZE, MIN_AUTO_EVAL = 500, 32  # --eval-size 0 (auto): the paper's 500, or less for a short run


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field: default value plus the help text the CLI shows."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def applies_to(option: str, method: str) -> bool:
    """Whether `method` reads `option`: a field whose metadata lists `methods` is ignored by every other method,
    so a report need not label a LoRA run with an OHoRA-only value."""
    field_ = next((f for f in dataclasses.fields(TrainConfig) if f.name == option), None)
    only = field_.metadata.get("methods") if field_ is not None else None
    return only is None or method in only


@dataclass
class TrainConfig:
    """Everything `oloraplus train` needs. Defaults follow the OLoRA+ paper (r=32, α=16, lr=3e-4, 1 epoch)."""

    model: str = opt("smollm2-135m", "HF hub id, local HF model dir, .gguf file, or alias 'smollm2-135m'")
    data: str = opt("builtin:stdlib", "JSON or JSONL file of Alpaca (instruction/input/output), ShareGPT "
                                      "(conversations; tool calls too), chat (messages; text content parts too), "
                                      "question/answer (GSM8K) or plain-text (text) records; a .txt file (plain "
                                      "text); an HF dataset id (train split; needs the hub); or 'builtin:stdlib'. "
                                      "Preference/KTO files are refused (docs/data.md)")
    method: str = opt("olora", "adapter type", choices=METHODS)
    ratio: float = opt(1.0, "λ: learning rate of B = λ × learning rate of A (LoRA+/OLoRA+); 1 = plain AdamW")
    rank: int = opt(32, "adapter rank r")
    alpha: float = opt(16.0, "adapter scale numerator α (s = α/r); OHoRA too (its paper's scale α is --rank 1)")
    ohora_init: str = opt("ranked", "OHoRA init: 'ranked' keeps every |R_kk|-ranked direction; 'paper' is the "
                                    "literal eqs. 8-9, which can start a layer with a zero factor", choices=OHORA_INITS,
                          methods=("ohora",))
    dropout: float = opt(0.0, "adapter dropout")
    lr: float = opt(3e-4, "learning rate η of the A factors (B gets λη; DoRA's magnitude, biases and any other "
                              "trained parameter stay at η: optim/ratio.py)")
    weight_decay: float = opt(0.0, "AdamW weight decay (never applied to biases and norms)")
    warmup_ratio: float = opt(0.0, "fraction of the run's optimizer steps (from --epochs or --max-steps) with linear "
                                     "warm-up; 1 = all of them")
    scheduler: str = opt("linear", "learning-rate schedule", choices=SCHEDULERS)
    epochs: float = opt(1.0, "training epochs")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1: run the epochs)")
    batch_size: int = opt(4, "examples per device per step")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_length: int = opt(512, "maximum tokens per example, at most the model's max_position_embeddings (longer "
                               "examples are truncated from the right and counted; plain text is packed into rows "
                               "of this length)")
    train_turns: str = opt("all", "which assistant turns carry loss: 'all' (every one, tool calls included, as "
                                  "LLaMA-Factory, axolotl and TRL do) or 'last' (only the final reply); a message's "
                                  "loss_weight 0 excludes its turn either way", choices=TRAIN_TURNS)
    train_size: int = opt(1000, "training examples (capped by the data)")
    eval_size: int = opt(0, "evaluation examples, capped by the data; 0 (auto): 500, or for a short --max-steps run "
                            "max(32, 2 × the examples it trains on) (default: 0)")
    val_size: int = opt(0, "validation examples, drawn apart from train and the --eval-size test examples; settings "
                           "are chosen on them (sweep select:, tune-ratio) and the test split reports (0: none)")
    seed: int = opt(42, "seed for data split, adapter init and training")
    split_seed: int = opt(-1, "seed of the train/validation/test split alone (-1: --seed); fix it when seeds vary so "
                              "that every seed shares one split and no seed's validation is another's test")
    target_modules: list[str] = opt([], "layer names to adapt, comma-separated; names that match no linear layer are "
                                        "rejected (default: every linear layer in the transformer blocks, never lm_head or "
                                        "the embeddings)")
    # Off by default: measured on SmolLM2 (bench/results.md), grouping by length moved the eval loss
    # ten times further than changing the random batch order does (+0.19 vs a 0.018 spread).
    group_by_length: bool = opt(False, "batch examples of similar length: less padding, about a quarter faster, but it "
                                       "changes the optimisation (homogeneous batches); off: random order")
    response_only_loss: bool = opt(True, "run the output head only where the loss is scored (same loss, "
                                         "less compute); off: the model's standard loss. A model that ignores "
                                         "logits_to_keep falls back to its own loss")
    # On by default: the same batches, loss and gradients as padding (tests/data/test_packing.py), and
    # faster on both devices (bench/results.md, bench/gpu_results.md).
    packing: bool = opt(True, "padding-free batches: each batch's examples concatenated into rows of at most "
                              "--max-length tokens, no attention across examples (same loss as padding, no pad "
                              "tokens); off: each row padded to the batch's longest. A model whose attention "
                              "does not keep packed examples apart (probed once at start) falls back to padding")
    tokens_per_batch: int = opt(0, "fill each batch up to N real tokens instead of --batch-size examples "
                                   "(0: off); fills a GPU evenly")
    # Models that don't fit (docs/big-models.md) and the launch-bound GPU step (docs/performance.md).
    quantize: str = opt("none", "load the frozen base quantized with bitsandbytes (nf4/fp4: 4-bit, int8: 8-bit; "
                                "pip install 'oloraplus[quantize]'); adapters and optimizer state stay fp32",
                        choices=QUANTIZE)
    gradient_checkpointing: bool = opt(False, "recompute each decoder layer's activations in the backward pass "
                                              "(transformers' non-reentrant checkpointing): less memory, more compute")
    fsdp: bool = opt(False, "under torchrun: shard the base over the processes (FSDP2 fully_shard per decoder layer)")
    compile: bool = opt(False, "torch.compile each decoder layer for the training steps (regional: one graph for "
                               "every layer and length; a layer that cannot compile trains eagerly, with one line); "
                               "off by default: on a CPU it costs more than it saves (docs/compile.md)")
    diagnostics_steps: int = opt(0, "refinement/exploration diagnostics every N steps, step 1 and the last step "
                                    "(0: at logging steps while their measured cost stays within 2 percent of the loop, "
                                    "and the final state after it; -1: off)")
    logging_steps: int = opt(5, "log (and print) the train loss every N optimizer steps; the first and the last "
                                     "step are always logged")
    eval_steps: int = opt(0, "also evaluate every N steps for the eval curve in loss.png (0: only at the end)")
    eval_generate: int = opt(0, "at the end, generate for N eval examples and report BLEU/ROUGE")
    max_new_tokens: int = opt(128, "tokens generated per example by --eval-generate")
    generate_batch_size: int = opt(32, "prompts decoded together by --eval-generate (left-padded, KV cache)")
    save_steps: int = opt(0, "write a resumable checkpoint every N steps (0: none)")
    resume: bool = opt(False, "continue from the last checkpoint in --output")
    report_to: str = opt("none", "also log to these trackers, comma-separated (tensorboard, wandb, mlflow, ...: "
                                 "the names transformers' Trainer accepts), checked before the model loads; 'none': only "
                                 "log.jsonl")
    trust_remote_code: bool = opt(False, "allow model code from the hub to run (off by default)")
    overwrite: bool = opt(False, "replace an existing run in --output")
    output: str = opt("runs/oloraplus", "run directory to write; an existing run is replaced only with --overwrite")

    def validate(self) -> "TrainConfig":
        """Reject values that would fail later, naming the flag."""
        check_method(self.method)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler: unknown {self.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize: unknown {self.quantize!r}; choose from {', '.join(QUANTIZE)}")
        if self.train_turns not in TRAIN_TURNS:
            raise ConfigError(f"--train-turns: unknown {self.train_turns!r}; choose from {', '.join(TRAIN_TURNS)}")
        check_quantize(self.quantize, self.method)  # the extra installed, the method runs on the format
        if self.ohora_init not in OHORA_INITS:
            raise ConfigError(f"--ohora-init: unknown {self.ohora_init!r}; choose from {', '.join(OHORA_INITS)}")
        check_ratio(self.ratio)
        check_rank(self.rank)
        check_dropout(self.dropout)
        positive = {"alpha": self.alpha, "lr": self.lr, "epochs": self.epochs,
                    "batch_size": self.batch_size, "grad_accum": self.grad_accum, "train_size": self.train_size,
                    "logging_steps": self.logging_steps,
                    "max_new_tokens": self.max_new_tokens, "generate_batch_size": self.generate_batch_size}
        for name, value in positive.items():
            if not (_finite(value) and value > 0):
                raise ConfigError(f"{flag(name)}: must be > 0, got {value}")
        non_negative = {"weight_decay": self.weight_decay, "warmup_ratio": self.warmup_ratio,
                        "eval_steps": self.eval_steps, "eval_size": self.eval_size, "eval_generate": self.eval_generate,
                        "val_size": self.val_size, "save_steps": self.save_steps,
                        "tokens_per_batch": self.tokens_per_batch}
        for name, value in non_negative.items():
            if not (_finite(value) and value >= 0):
                raise ConfigError(f"{flag(name)}: must be >= 0, got {value}")
        if self.warmup_ratio > 1:
            raise ConfigError(f"--warmup-ratio: must be <= 1, got {self.warmup_ratio}")
        if self.max_length < 8:
            raise ConfigError(f"--max-length: must be >= 8, got {self.max_length}")
        if self.diagnostics_steps < -1:
            raise ConfigError(f"--diagnostics-steps: must be > 0, 0 (auto) or -1 (off), got {self.diagnostics_steps}")
        if self.split_seed < -1:
            raise ConfigError(f"--split-seed: must be >= 0, or -1 (use --seed), got {self.split_seed}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"--max-steps: must be > 0 or -1, got {self.max_steps}")
        if not self.output:
            raise ConfigError("--output: must not be empty")
        if self.fsdp and self.quantize != "none":  # train and plan alike
            raise ConfigError(f"--fsdp with --quantize {self.quantize}: not supported (bitsandbytes' packed 4/8-bit "
                              "weights cannot be sharded by FSDP2 on this stack, see docs/fsdp.md); drop one of the two")
        if self.fsdp and self.compile:
            raise ConfigError("--compile with --fsdp: not supported yet (compiling wraps the decoder layers that FSDP "
                              "shards, an untested pair); drop one of the two")
        report_targets(self.report_to)
        return self

    def data_seed(self) -> int:
        """The seed of the train/validation/test split: --split-seed, or --seed when it is -1."""
        return self.seed if self.split_seed == -1 else self.split_seed

    def eval_examples(self) -> int:
        """`eval_size`, with 0 (auto) resolved: a 2-step smoke test should not spend minutes scoring 500 examples.

        An eval forward costs about a third of a training step per example, so scoring twice the examples a short
        run trains on keeps the final eval below the training time; 32 keeps the loss from resting on a handful.
        """
        if self.eval_size:
            return self.eval_size
        if self.max_steps < 0 or self.tokens_per_batch:  # epochs or token budgets: the whole train split is used
            return DEFAULT_EVAL_SIZE
        world = int(os.environ.get("WORLD_SIZE", "1"))
        trained = min(self.train_size, self.max_steps * self.batch_size * self.grad_accum * world)
        return min(DEFAULT_EVAL_SIZE, max(MIN_AUTO_EVAL, 2 * trained))


def report_targets(report_to: str) -> list[str]:
    """`--report-to` as the list `TrainingArguments(report_to=...)` takes ([] for "none"), checked now:
    an unknown name or a tracker that is not installed would otherwise fail after the model has loaded."""
    names = _comma_list(report_to)
    if names == ["none"]:
        return []  # the default: checked without importing transformers (config errors come before torch)
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK, get_available_reporting_integrations)

    known = sorted(INTEGRATION_TO_CALLBACK)
    installed = get_available_reporting_integrations()
    for name in names:
        if name not in known:
            raise ConfigError(f"--report-to: unknown tracker {name!r}; choose 'none' or from {', '.join(known)}")
        if name not in installed:
            extra = " (pip install 'oloraplus[tensorboard]')" if name == "tensorboard" else ""
            raise ConfigError(f"--report-to {name}: its package is not installed{extra}")
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"--report-to: expected 'none' or distinct tracker names, got {report_to!r}")
    return names


def _finite(value: float) -> bool:
    """math.isfinite, also for ints beyond float range (which it cannot convert)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_method(method: str) -> str:
    """--method: a registered adapter method. Checked here for the config and for `oloraplus.api.add_adapter`."""
    if method not in METHODS:
        raise ConfigError(f"--method: unknown method {method!r}; choose from {', '.join(METHODS)}")
    return method


def check_ratio(ratio: float) -> float:
    """λ must be a finite positive number: λ < 1 refines, λ > 1 explores, λ = 1 is plain AdamW."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not _finite(ratio) or ratio <= 0:
        raise ConfigError(f"--ratio: λ must be a finite number > 0, got {ratio}")
    return float(ratio)


def check_rank(rank: int, error: type[OloraError] = ConfigError) -> int:
    """--rank: a positive integer. Checked here for the config and for every adapter built from Python
    (`error=AdapterError`: `attach_adapter`, `hira_config`)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not _finite(rank) or rank <= 0:
        raise error(f"--rank: must be a positive integer, got {rank}")
    return rank


def check_dropout(dropout: float, error: type[OloraError] = ConfigError) -> float:
    """--dropout: a probability below 1. Checked here for the config and for every adapter built from Python."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise error(f"--dropout: must be in [0, 1), got {dropout}")
    return dropout


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; `list[str]` stays list."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig,
                  help_overrides: dict[str, str] | None = None, config_flag: bool = True) -> None:
    """Generate one flag per field; defaults are suppressed so only given flags override YAML.

    `help_overrides` ({field: help}) rewords a field's help for one command (tune-ratio's --output is a search
    directory, not a run directory); the flag, its type and default still come from the field.
    `config_flag=False` leaves out `--config`, for a second dataclass on a parser that has one (the executor flags).
    """
    help_overrides = help_overrides or {}
    unknown = set(help_overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"help_overrides: {cls.__name__} has no field {sorted(unknown)[0]!r}")
    if config_flag:
        parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file with any of the options below")
    for f, tp in _fields(cls):
        tp = _base_type(tp)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = help_overrides.get(f.name, f.metadata.get("help", ""))
        if "(default:" not in help_text:  # a help that describes its default itself must not get a second one
            help_text += f" (default: {default})"
        if tp is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
            continue
        if typing.get_origin(tp) is list:
            kwargs.update(type=_comma_list, metavar="A,B,...")
        else:
            kwargs.update(type=tp)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag(f.name), help=help_text, **kwargs)


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _coerce(source: str, key: str, value: Any, tp: Any) -> Any:
    tp = _base_type(tp)
    where = f"{source}: key '{key}'"
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = _comma_list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {type(value).__name__}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {str(value)[:20]}... is beyond the float range") from None
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


# What other trainers (HF TrainingArguments, PEFT, axolotl) call our options: spelling alone would not find them.
KNOWN_AS = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "r": "rank", "lora_r": "rank", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "lr_scheduler_type": "scheduler", "lr_scheduler": "scheduler",
    "output_dir": "output", "model_name_or_path": "model", "base_model": "model", "dataset": "data",
    "max_seq_length": "max_length", "sequence_len": "max_length", "loraplus_lr_ratio": "ratio", "lambda": "ratio",
}


def build_config(cls: type, values: dict[str, Any], source: str) -> Any:
    """Check keys and types of a mapping (from YAML or a sweep) and build the dataclass."""
    known = {f.name: tp for f, tp in _fields(cls)}
    kwargs = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            hint = [KNOWN_AS[key]] if KNOWN_AS.get(key) in known else difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{source}: unknown key {str(raw_key)!r}{suggestion}")
        kwargs[key] = _coerce(source, key, value, known[key])
    return cls(**kwargs)


def resolve(cls: type, namespace: argparse.Namespace) -> Any:
    """Defaults < `--config` YAML < flags, validated."""
    values: dict[str, Any] = {}
    config_path = getattr(namespace, "config", None)
    if config_path:
        values.update(read_yaml(config_path))
    field_names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(namespace).items() if k in field_names})
    cfg = build_config(cls, values, str(config_path) if config_path else "command line")
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
