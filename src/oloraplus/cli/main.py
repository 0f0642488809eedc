"""`oloraplus` command line: one subcommand per job; user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from oloraplus import __version__
from oloraplus.config import TrainConfig, add_arguments, resolve
from oloraplus.errors import OloraError

DESCRIPTION = """\
Fine-tune causal language models with orthonormal (QR) initialised adapters.

OLoRA   : B = Q_r, A = R_r from the QR of each frozen weight W; the base becomes W - s·B·A.
OLoRA+  : OLoRA + LoRA+: the learning rate of B is λ (--ratio) times that of A.
          λ < 1 refines the initial orthonormal basis, λ > 1 explores away from it.
Baselines: lora, pissa (SVD init), dora, hira, ohora (QR-ranked Kronecker, m+n params per layer).

Every option of `train` can also be set in a YAML file given with --config; flags override it.
"""


def _train(args: argparse.Namespace) -> int:
    from oloraplus.train.recipe import train

    cfg = resolve(TrainConfig, args)
    metrics = train(cfg).metrics
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: {cfg.output}  eval_loss={metrics['eval_loss']:.4f}  perplexity={metrics['perplexity']:.2f}  "
            f"steps={metrics['steps']}  tokens/s={metrics['tokens_per_s']:.0f}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    except KeyboardInterrupt:
        print("oloraplus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
