"""--quantize on SmolLM2-135M (CPU): the numbers in docs/quantize.md.

    python bench/quantize_smollm2.py --data /work/shared/data/alpaca_en_demo.json --out /tmp/quantize-bench

For each --quantize in QUANTIZE it trains the same OLoRA run as a child process under /usr/bin/time (peak RSS of the
whole process) and reads load time, s/step, eval loss and the re-quantization error from metrics.json. For the nf4
run it then scores the saved adapter three ways on the run's eval split: oloraplus' load on the nf4 base (the trained
model rebuilt), PEFT's plain load on the nf4 base, and PEFT's plain load on the fp32 base; and it measures the base's
own quantization error ‖deq(Q(W)) − W‖_F/‖W‖_F per layer. Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

QUANTIZE = ("none", "nf4")


def train(quantize: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / f"olora-{quantize}"
    cmd = [sys.executable, "-m", "oloraplus", "train", "--model", "smollm2-135m", "--data", args.data,
           "--method", "olora", "--quantize", quantize, "--max-steps", str(args.steps),
           "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--train-size", str(args.batch_size * args.steps),
           "--eval-size", str(args.eval_size),
           "--logging-steps", "1", "--diagnostics-steps", "-1", "--seed", "1", "--overwrite", "--output", str(out)]
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], capture_output=True, text=True,
                          env={**os.environ, "OLORAPLUS_PROGRESS": "0"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    rss_kb = int(re.search(r"MAXRSS_KB=(\d+)", proc.stderr).group(1))
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ("load_s", "seconds_per_step", "eval_loss", "requant_error_mean", "requant_error_max", "requant_layers")
    return {"quantize": quantize, "run": str(out), "command": " ".join(cmd[1:]), "peak_rss_gib": rss_kb / 2**20,
            **{k: metrics.get(k) for k in keys}}


def adapter_on_bases(run: Path) -> dict:
    """Eval loss of the nf4 run's saved adapter: oloraplus' load on nf4, PEFT's plain load on nf4 and on fp32."""
    from oloraplus import rundir  # first: it quiets bitsandbytes' import-time warning, which PEFT triggers

    import torch
    from peft import PeftModel

    from oloraplus.adapters.export import load_adapter
    from oloraplus.adapters.quantized import dense_weight
    from oloraplus.data.packing import batch_collator
    from oloraplus.data.prepare import prepare
    from oloraplus.eval.loss import evaluate_loss

    cfg = rundir.load_run_config(run)
    adapter = run / rundir.ADAPTER_DIR
    results = {}
    for name, quantize, loader in (("oloraplus_load_nf4", cfg.quantize, load_adapter),
                                   ("peft_load_nf4", cfg.quantize, lambda m, p: PeftModel.from_pretrained(m, str(p))),
                                   ("peft_load_fp32", "none", lambda m, p: PeftModel.from_pretrained(m, str(p)))):
        prep = prepare(replace(cfg, quantize=quantize), device="cpu")
        model = loader(prep.loaded.model, adapter).eval()
        collator = batch_collator(model, prep.loaded.tokenizer.pad_token_id, cfg.max_length, cfg.packing)
        results[name] = evaluate_loss(model, prep.eval_dataset, collator, batch_size=cfg.batch_size)["eval_loss"]
    # the base's own NF4 error per linear layer, against the fp32 weights
    fp32 = prepare(replace(cfg, quantize="none"), device="cpu").loaded.model
    nf4 = prepare(cfg, device="cpu").loaded.model
    dense = dict(fp32.named_modules())
    errors = []
    for name, module in nf4.named_modules():
        if type(getattr(module, "weight", None)).__name__ == "Params4bit":
            W = dense[name].weight.detach().float()
            errors.append(float(torch.linalg.norm(dense_weight(module) - W) / torch.linalg.norm(W)))
    results.update(base_error_mean=sum(errors) / len(errors), base_error_max=max(errors), base_layers=len(errors))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--eval-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-only", action="store_true", help="only the two training runs (no adapter scoring)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = [train(q, args) for q in QUANTIZE]
    extra = {} if args.train_only else adapter_on_bases(Path(rows[-1]["run"]))
    result = {"rows": rows, "nf4_adapter": extra, "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    Path(args.out, "results.json").write_text(json.dumps(result, indent=1))
    print("| --quantize | load (s) | peak RSS (GiB) | s/step | eval loss | requant ε mean / max |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        eps = (f"{r['requant_error_mean']:.4f} / {r['requant_error_max']:.4f}" if r["requant_error_mean"] is not None
               else "-")
        print(f"| {r['quantize']} | {r['load_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['seconds_per_step']:.2f} | "
              f"{r['eval_loss']:.4f} | {eps} |")
    print(json.dumps(extra, indent=1))


if __name__ == "__main__":
    main()
