"""OLoRA+ in a plain transformers Trainer, with an optional optuna search over λ and the learning rate.

    python examples/hf_trainer.py --data alpaca.json --method olora --ratio 4 --output runs/trainer-olora-plus
    pip install "oloraplus[optuna]"
    python examples/hf_trainer.py --data alpaca.json --search 8 --output runs/trainer-search
"""

from __future__ import annotations

from typing import Any

import oloraplus  # before transformers: it quiets an import-time warning of bitsandbytes (via PEFT)
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import set_seed

from example_common import collator, load_base, model_path, parser, prompt_completion, reload_check, run, tokenized


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--search", type=int, default=0, help="optuna trials over λ and --lr (0: train once)")
    args = p.parse_args(argv)
    training_args = oloraplus.OLoRAPlusTrainingArguments(
        output_dir=args.output, ratio=args.ratio, learning_rate=args.lr, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, seed=args.seed, logging_steps=5, save_strategy="no",
        report_to=[], remove_unused_columns=False,
    )
    path = model_path(args.model)
    base, tokenizer = load_base(path)
    rows = tokenized(prompt_completion(args.data), tokenizer, args.max_length)
    train_rows, eval_rows = (rows[4:], rows[:4]) if args.search else (rows, None)
    collate = collator(tokenizer)

    def model_init(trial: Any = None) -> Any:
        """A fresh adapter (and base) per trial; EVA reads its training batches, the other methods ignore them."""
        model = base if trial is None and not args.search else load_base(path)[0]
        set_seed(args.seed)
        batches = DataLoader(train_rows, batch_size=args.batch_size, collate_fn=collate)
        return oloraplus.add_adapter(model, args.method, rank=args.rank, alpha=args.alpha, calibration=batches)

    datasets = {"train_dataset": Dataset.from_list(train_rows), "data_collator": collate,
                "eval_dataset": Dataset.from_list(eval_rows) if eval_rows else None}
    if args.search:
        trainer = oloraplus.OLoRAPlusTrainer(model_init=model_init, args=training_args, **datasets)
        best = trainer.hyperparameter_search(  # λ and η are fields of the arguments, so every trial sets them
            hp_space=lambda t: {"ratio": t.suggest_float("ratio", 0.25, 16, log=True),
                                "learning_rate": t.suggest_float("learning_rate", 1e-5, 1e-3, log=True)},
            n_trials=args.search, backend="optuna")
        return {"best_eval_loss": best.objective, "best": best.hyperparameters}
    trainer = oloraplus.OLoRAPlusTrainer(model=model_init(), args=training_args, **datasets)
    result = trainer.train()
    trainer.save_model(args.output)  # base-relative adapter + tokenizer
    return {"train_loss": result.training_loss, "output": args.output,
            **reload_check(trainer.model, args.output, path)}


if __name__ == "__main__":
    run(main)
