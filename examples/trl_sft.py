"""OLoRA+ in TRL's SFTTrainer: attach with oloraplus, train with TRL, save an adapter for the untouched base.

    pip install "oloraplus[trl]"
    python examples/trl_sft.py --data alpaca.json --method olora --ratio 4 --output runs/trl-olora-plus

TRL keeps its data path (prompt-completion records here: loss on the completion only; `--packing` packs rows).
"""

from __future__ import annotations

from typing import Any

import oloraplus  # before transformers: it quiets an import-time warning of bitsandbytes (via PEFT)
from datasets import Dataset
from transformers import set_seed

from example_common import load_base, model_path, parser, prompt_completion, reload_check, run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--packing", action="store_true", help="TRL's packing (BFD, padding-free)")
    args = p.parse_args(argv)
    from oloraplus import OLoRAPlusSFTConfig, OLoRAPlusSFTTrainer  # needs the [trl] extra: one line if missing

    config = OLoRAPlusSFTConfig(  # λ is a field: TrlParser and hyperparameter_search see it
        output_dir=args.output, ratio=args.ratio, learning_rate=args.lr, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, max_length=args.max_length, packing=args.packing,
        seed=args.seed, logging_steps=5, save_strategy="no", report_to=[], gradient_checkpointing=False, bf16=False,
    )
    path = model_path(args.model)
    base, tokenizer = load_base(path)
    set_seed(args.seed)
    model = oloraplus.add_adapter(base, args.method, rank=args.rank, alpha=args.alpha)  # not peft_config=
    trainer = OLoRAPlusSFTTrainer(model=model, args=config, processing_class=tokenizer,
                                  train_dataset=Dataset.from_list(prompt_completion(args.data)))
    result = trainer.train()
    trainer.save_model(args.output)  # base-relative: loads with PeftModel.from_pretrained on the untouched base
    return {"train_loss": result.training_loss, "output": args.output,
            **reload_check(trainer.model, args.output, path)}


if __name__ == "__main__":
    run(main)
