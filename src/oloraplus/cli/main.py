"""`oloraplus` command line: one subcommand per job; user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import difflib
import errno
import sys
import time
from typing import Any, Callable

from oloraplus import __version__
from oloraplus.adapters import registry
from oloraplus.adapters.adapter_dir import add_model_argument
from oloraplus.cli import export, plan as plan_cli
from oloraplus.compose import cli as compose_cli, study
from oloraplus.config import KNOWN_AS, TrainConfig, add_arguments, flag, resolve
from oloraplus.console import is_main
from oloraplus.errors import ConfigError, OloraError
from oloraplus.eval import chat
from oloraplus.experiments import cli as experiments_cli

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
    from oloraplus.adapters.adapter_dir import adapter_source
    from oloraplus.console import eval_summary
    from oloraplus.eval.run_eval import eval_config, evaluate_run, parse_eval_size

    if args.harness is not None:
        return _harness(args)
    metrics = evaluate_run(args.run_dir, data=args.data, generate=args.generate,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           generate_batch_size=args.generate_batch_size, device=args.device,
                           output=args.output, eval_size=parse_eval_size(args.eval_size), model=args.model)
    source = adapter_source(args.run_dir, args.model)
    max_length = eval_config(source, args.data).max_length  # what truncated and dropped the examples
    lines = eval_summary(metrics, args.run_dir, args.data, max_length, time.perf_counter() - start,
                         output=args.output)
    if source.run_dir is None:  # not a run: nothing was written into the adapter's directory
        lines[-1] = f"adapter: {source.path} (base {source.base_model}; not a run, nothing written into it)"
    print("\n".join(lines))
    return 0


def _harness(args: argparse.Namespace) -> int:
    from oloraplus.eval.harness import harness_eval, parse_tasks

    if args.data is not None or args.generate or args.output is not None or args.eval_size is not None:
        raise ConfigError("--harness runs only the harness tasks: drop --data/--generate/--output/--eval-size (run "
                          "them separately)")
    if args.harness_limit is not None and args.harness_limit < 1:
        raise ConfigError(f"--harness-limit {args.harness_limit}: must be at least 1")
    results = harness_eval(args.run_dir, parse_tasks(args.harness), data=args.harness_data, limit=args.harness_limit,
                           max_new_tokens=args.max_new_tokens, batch_size=args.generate_batch_size or 8,
                           device=args.device, model=args.model)
    for task, row in results.items():
        print(task + ": " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from oloraplus.adapters.merge import merge_run

    print(f"merged model written to {merge_run(args.run_dir, args.output, args.model)}")
    return 0


def _compose(args: argparse.Namespace) -> int:
    return compose_cli.compose_command(args.inputs, args.output, args.weights, args.dry_run)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run, or any PEFT LoRA adapter directory (then give "
                        "--data and --output; nothing is written into it)")
    add_model_argument(parser)
    parser.add_argument("--data", default=None, help="evaluate on this data instead of the run's eval split "
                        "(needs --output: the run's files are never changed)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="write eval.json (and generations.jsonl) to DIR instead of updating the run's "
                        "metrics.json; required with --data")
    parser.add_argument("--eval-size", default=None, metavar="N|all",
                        help="with --data: score N examples (seeded as the run's split), or all of them in file order "
                        "(default: the run's eval size)")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="greedy-generate for N eval examples (batched, KV cache) and report BLEU/ROUGE")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="K",
                        help="at most K new tokens per generated response (default 128)")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per eval-loss batch (default: the "
                        "run's batch size)")
    parser.add_argument("--generate-batch-size", type=int, default=None, metavar="B",
                        help="prompts decoded together by --generate (default: the run's, 32) or --harness "
                        "(default 8)")
    parser.add_argument("--device", default="auto", help="where to run: auto (the GPU when there is one, else the "
                        "CPU), cpu, cuda or cuda:N")
    parser.add_argument("--harness", default=None, metavar="TASKS",
                        help="run lm-evaluation-harness tasks (comma-separated; gsm8k_local ships with oloraplus) on "
                        "the base + adapter instead of the eval loss; results go to metrics.json under 'harness'. "
                        'Needs pip install "oloraplus[harness]"')
    parser.add_argument("--harness-limit", type=int, default=None, metavar="N",
                        help="only the first N examples of each harness task")
    parser.add_argument("--harness-data", default=None, metavar="FILE",
                        help="the JSON Lines file gsm8k_local reads (records {question, answer}; answer ends "
                        "'#### N')")


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run, or any PEFT LoRA adapter directory")
    add_model_argument(parser)
    parser.add_argument("--output", required=True, metavar="DIR")


def _compose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_OR_ADAPTER")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--weights", default=None, metavar="w1,w2,...")
    parser.add_argument("--dry-run", action="store_true", help="only the interference diagnostic")


def _details(module) -> str:
    """A command module's docstring after its first paragraph: the description its --help shows."""
    return module.__doc__.split("\n\n", 1)[1]


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, registered here in --help order: name, one-line help, description, flags, handler."""
    parser = OneLineParser(
        prog="oloraplus", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"oloraplus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    def command(name: str, run: Callable[[argparse.Namespace], int],
                add: Callable[[argparse.ArgumentParser], None], **texts: Any) -> None:
        """`texts`: add_parser's help, description and formatter_class."""
        subparser = sub.add_parser(name, **texts)
        add(subparser)
        subparser.set_defaults(func=run)

    command("train", _train, lambda p: add_arguments(p, TrainConfig),
            help="fine-tune a model and write a run directory",
            description="Fine-tune a causal LM with an adapter; writes adapter/, metrics.json, log.jsonl, "
            "config.yaml and loss.png into --output.")
    command("plan", plan_cli.plan_command, plan_cli.add_plan_arguments,
            help="parameters and memory per process of a train run, from the model's config alone",
            description=_details(plan_cli), formatter_class=raw)
    command("eval", _eval, _eval_arguments,
            help="evaluate a run: eval loss, perplexity, BLEU/ROUGE of generations",
            description="Reload RUN_DIR/adapter onto the untouched base and evaluate on the run's eval split (or "
            "--data). The run's own split updates RUN_DIR/metrics.json (with --generate: RUN_DIR/generations.jsonl) "
            "unless --output DIR is given; --data always writes to --output DIR (eval.json, generations.jsonl). Any "
            "other PEFT LoRA adapter directory (e.g. from compose) is evaluated on --data, nothing written into it.")
    command("generate", chat.generate_command, chat.add_generate_arguments,
            help="reply to a prompt (or a file of prompts) with a run's adapter",
            description="Load RUN_DIR's base model and adapter and reply to --prompt (streamed) or to every prompt "
            "of --prompts FILE (one JSON line {prompt, response} each), using the model's chat template. RUN_DIR may "
            "be any PEFT LoRA adapter directory (e.g. from compose); its base: --model, else the one it names.")
    command("export", export.export_command, export.add_export_arguments,
            help="export a run's adapter for serving (merged model, llama.cpp GGUF) or check it for vLLM",
            description=_details(export), formatter_class=raw)
    command("merge", _merge, _merge_arguments,
            help="merge a run's adapter into the base weights (alias of export --format merged)",
            description="Load the base model of RUN_DIR, apply RUN_DIR/adapter, merge it into the weights and save a "
            "plain Hugging Face model (safetensors + tokenizer) to --output.")
    command("compose", _compose, _compose_arguments,
            help="sum independently trained adapters exactly, with the interference diagnostic",
            description="ΔW = Σ w_i ΔW_i as one PEFT LoRA of rank Σ r_i (DIR/adapter/), plus the pairwise cosine "
            "similarity of the deltas per layer and its RMS over layers (DIR/interference.json, interference.png).")
    command("compose-study", compose_cli.study_command, compose_cli.add_study_arguments,
            help="train one adapter per domain and one on the merged data; compare their sums",
            description=_details(study), formatter_class=raw)
    command("sweep", experiments_cli.sweep_command, experiments_cli.add_sweep_arguments,
            help="train a grid of runs (resumable), then write results.csv and report.md",
            description="Train every run of SWEEP.yaml into DIR/runs/<name>.\n\n" + experiments_cli.SWEEP_HELP,
            formatter_class=raw)
    command("report", experiments_cli.report_command, experiments_cli.add_report_arguments,
            help="tables, paired CIs and plots for a sweep directory",
            description="Write DIR/report.md and DIR/plots/*.png from the finished runs in DIR and print the main "
            "table.")
    command("tune-ratio", experiments_cli.tune_command, experiments_cli.add_tune_arguments,
            help="find λ by successive halving over a log grid",
            description="Successive halving over λ: every round trains the surviving values with twice the steps and "
            "keeps the better half by eval loss. Takes every `train` option; --ratio and --max-steps are set by the "
            f"search. --output is the search directory (default {experiments_cli.DEFAULT_TUNE_OUTPUT}); writes "
            "tune.md, tune.json and tune.png there, and resumes when run again.")
    return parser


def suggest_flag(name: str, known: list[str]) -> str | None:
    """The flag a mistyped `name` most likely meant: by what other trainers call it (KNOWN_AS), then by spelling."""
    key = name.split("=", 1)[0].lstrip("-").replace("-", "_")
    alias = flag(KNOWN_AS[key]) if key in KNOWN_AS else None
    if alias in known:
        return alias
    close = difflib.get_close_matches("--" + key.replace("_", "-"), known, n=1, cutoff=0.6)
    return close[0] if close else None


def unrecognized(parser: argparse.ArgumentParser, command: str | None, extras: list[str]) -> None:
    """argparse's 'unrecognized arguments' with a "did you mean" for the first unknown flag, as YAML keys get;
    reported by the subcommand's parser, so the line points at its --help."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    flags = [e for e in extras if e.startswith("--")]
    sub = next((a.choices.get(command) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        parser.error(message)
    known = [o for action in sub._actions for o in action.option_strings if o.startswith("--")]
    hint = suggest_flag(flags[0], known) if flags else None
    sub.error(message + (f" (did you mean {hint}?)" if hint else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        unrecognized(parser, getattr(args, "command", None), extras)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except OloraError as exc:
        if is_main() or not getattr(exc, "same_on_every_rank", False):  # one line, not one per rank
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
