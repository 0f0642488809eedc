"""OLoRA+ in your own accelerate loop: oloraplus gives the adapter, the λ optimizer and the saved adapter.

    python examples/accelerate_loop.py --data alpaca.json --method olora --ratio 4 --output runs/loop-olora-plus
    accelerate launch examples/accelerate_loop.py ...   # several processes: the same script
"""

from __future__ import annotations

from typing import Any

import oloraplus  # before transformers: it quiets an import-time warning of bitsandbytes (via PEFT)
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup, set_seed

from example_common import collator, load_base, model_path, parser, prompt_completion, reload_check, run, tokenized


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    accelerator = Accelerator()
    path = model_path(args.model)
    base, tokenizer = load_base(path)
    rows = tokenized(prompt_completion(args.data), tokenizer, args.max_length)
    collate = collator(tokenizer)
    set_seed(args.seed)
    loader = DataLoader(rows, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    model = oloraplus.add_adapter(base, args.method, rank=args.rank, alpha=args.alpha, calibration=loader)
    optimizer = oloraplus.build_ratio_optimizer(model, lr=args.lr, ratio=args.ratio)  # A at η, B at λη
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, args.max_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    losses: list[float] = []
    model.train()
    while len(losses) < args.max_steps:
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if len(losses) == args.max_steps:
                break
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"first_loss": losses[0], "last_loss": losses[-1], "output": args.output}
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        oloraplus.save_adapter(trained, args.output)  # base-relative: PeftModel.from_pretrained on the base
        tokenizer.save_pretrained(args.output)
        result.update(reload_check(trained, args.output, path))
    return result


if __name__ == "__main__":
    run(main)
