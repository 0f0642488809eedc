"""`oloraplus` command line: one subcommand per job; user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path
from typing import Callable

from oloraplus import __version__
from oloraplus.adapters import registry
from oloraplus.config import TrainConfig, add_arguments, resolve
from oloraplus.errors import ConfigError, OloraError

DESCRIPTION = """\
Fine-tune causal language models with orthonormal (QR) initialised adapters.

OLoRA   : B = Q_r, A = R_r from the QR of each frozen weight W; the base becomes W - s·B·A.
OLoRA+  : OLoRA + LoRA+: the learning rate of B is λ (--ratio) times that of A.
          λ < 1 refines the initial orthonormal basis, λ > 1 explores away from it.

Methods (--method):
{methods}

Every option of `train` can also be set in a YAML file given with --config; flags override it.
""".format(methods="\n".join(f"  {m.name:<6} {m.help}" for m in registry.methods()))


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`oloraplus train: error: ...`) and exit 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"oloraplus: error: {message} (see {self.prog} --help)\n")


def _train(args: argparse.Namespace) -> int:
    cfg = resolve(TrainConfig, args)  # parsed and validated before torch is imported: a typo fails in a second
    start = time.perf_counter()
    from oloraplus.console import is_main, train_summary
    from oloraplus.train.recipe import train

    metrics = train(cfg).metrics
    if is_main():
        print("\n".join(train_summary(metrics, cfg.output, cfg.max_length, time.perf_counter() - start)))
    return 0


def _eval(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    from oloraplus.console import eval_summary
    from oloraplus.eval.run_eval import evaluate_run
    from oloraplus.rundir import load_run_config

    if args.harness is not None:
        return _harness(args)
    metrics = evaluate_run(args.run_dir, data=args.data, generate=args.generate,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           generate_batch_size=args.generate_batch_size, device=args.device)
    max_length = load_run_config(Path(args.run_dir)).max_length  # what truncated and dropped the examples
    print("\n".join(eval_summary(metrics, args.run_dir, args.data, max_length, time.perf_counter() - start)))
    return 0


def _harness(args: argparse.Namespace) -> int:
    from oloraplus.eval.harness import harness_eval, parse_tasks

    if args.data is not None or args.generate:
        raise ConfigError("--harness runs only the harness tasks: drop --data/--generate (run them separately)")
    if args.harness_limit is not None and args.harness_limit < 1:
        raise ConfigError(f"--harness-limit {args.harness_limit}: must be at least 1")
    results = harness_eval(args.run_dir, parse_tasks(args.harness), data=args.harness_data, limit=args.harness_limit,
                           max_new_tokens=args.max_new_tokens, batch_size=args.generate_batch_size or 8,
                           device=args.device)
    for task, row in results.items():
        print(task + ": " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from oloraplus.adapters.merge import merge_run

    print(f"merged model written to {merge_run(args.run_dir, args.output)}")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from oloraplus.compose.cli import compose_command

    return compose_command(args.inputs, args.output, args.weights, args.dry_run)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="oloraplus", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"oloraplus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train", help="fine-tune a model and write a run directory",
        description="Fine-tune a causal LM with an adapter; writes adapter/, metrics.json, log.jsonl, "
        "config.yaml and loss.png into --output.",
    )
    add_arguments(train, TrainConfig)
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "eval", help="evaluate a run: eval loss, perplexity, BLEU/ROUGE of generations",
        description="Reload RUN_DIR/adapter onto the untouched base and evaluate on the run's eval split (or --data). "
        "Updates RUN_DIR/metrics.json; with --generate writes RUN_DIR/generations.jsonl.",
    )
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--data", default=None, help="evaluate on this data instead of the run's eval split")
    ev.add_argument("--generate", type=int, default=0, metavar="N",
                    help="greedy-generate for N eval examples (batched, KV cache) and report BLEU/ROUGE")
    ev.add_argument("--max-new-tokens", type=int, default=128, metavar="K",
                    help="at most K new tokens per generated response (default 128)")
    ev.add_argument("--batch-size", type=int, default=None, help="examples per eval-loss batch (default: the run's "
                    "batch size)")
    ev.add_argument("--generate-batch-size", type=int, default=None, metavar="B",
                    help="prompts decoded together by --generate (default: the run's, 32) or --harness (default 8)")
    ev.add_argument("--device", default="auto", help="where to run: auto (the GPU when there is one, else the "
                    "CPU), cpu, cuda or cuda:N")
    ev.add_argument("--harness", default=None, metavar="TASKS",
                    help="run lm-evaluation-harness tasks (comma-separated; gsm8k_local ships with oloraplus) on the "
                    "base + adapter instead of the eval loss; results go to metrics.json under 'harness'. "
                    'Needs pip install "oloraplus[harness]"')
    ev.add_argument("--harness-limit", type=int, default=None, metavar="N",
                    help="only the first N examples of each harness task")
    ev.add_argument("--harness-data", default=None, metavar="FILE",
                    help="the JSON Lines file gsm8k_local reads (records {question, answer}; answer ends '#### N')")
    ev.set_defaults(func=_eval)

    from oloraplus.eval.chat import add_parser as add_generate

    add_generate(sub)

    from oloraplus.cli.export import add_parser as add_export

    add_export(sub)

    merge = sub.add_parser(
        "merge", help="merge a run's adapter into the base weights (alias of export --format merged)",
        description="Load the base model of RUN_DIR, apply RUN_DIR/adapter, merge it into the weights and save a "
        "plain Hugging Face model (safetensors + tokenizer) to --output.",
    )
    merge.add_argument("run_dir", metavar="RUN_DIR")
    merge.add_argument("--output", required=True, metavar="DIR")
    merge.set_defaults(func=_merge)

    compose = sub.add_parser(
        "compose", help="sum independently trained adapters exactly, with the interference diagnostic",
        description="ΔW = Σ w_i ΔW_i as one PEFT LoRA of rank Σ r_i (DIR/adapter/), plus the pairwise cosine "
        "similarity of the deltas per layer and its RMS over layers (DIR/interference.json, interference.png).",
    )
    compose.add_argument("inputs", nargs="+", metavar="RUN_OR_ADAPTER")
    compose.add_argument("--output", required=True, metavar="DIR")
    compose.add_argument("--weights", default=None, metavar="w1,w2,...")
    compose.add_argument("--dry-run", action="store_true", help="only the interference diagnostic")
    compose.set_defaults(func=_compose)

    from oloraplus.compose.study import add_parser as add_compose_study
    from oloraplus.experiments.cli import add_parsers

    add_compose_study(sub)

    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except OloraError as exc:
        print(f"oloraplus: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only, permissions: the run dir itself is left as it was
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        print(f"oloraplus: error: cannot write {exc.filename or 'output'}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oloraplus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
