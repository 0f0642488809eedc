"""study.md: a compose study's data, trainings, perplexities and sums as Markdown tables, and the fitted line."""

from __future__ import annotations

import shlex
from typing import Any

from oloraplus.compose.study_spec import StudySpec, label
from oloraplus.markdown import markdown_table
from oloraplus.paths import portable_command, portable_path


def report_markdown(spec: StudySpec, result: dict[str, Any]) -> str:
    names, ppl, fit = spec.names, result["perplexity"], result["fit"]
    lines = ["# Compose study: summed domain adapters vs the merged-data adapter", "",
             f"Command: `{portable_command(result['command'] or shlex.quote(spec.source))}`", ""]
    lines += [markdown_table(["domain", "data", "train", "held-out"], [
        [d, f"`{portable_path(v['data'])}`", v["train_examples"], v["heldout_examples"]]
        for d, v in result["domains"].items()], align="llrr")]
    lines += ["", "Trainings (a sum costs the steps of its domain runs together):", ""]
    lines += [markdown_table(["run", "trained on", "examples", "steps", "tokens", "own eval loss"], [
        [name, label(run["domains"]), m["train_examples"], m["steps"], m["train_tokens"], f"{m['eval_loss']:.4f}"]
        for name, run in result["runs"].items() for m in [run["metrics"]]], align="llrrrr")]
    lines += ["", "## Held-out perplexity (lower is better)", ""]
    lines += [markdown_table(["model", *names], [[v, *(f"{ppl[v][d]['perplexity']:.3f}" for d in names)] for v in ppl],
                             align="l" + "r" * len(names))]
    lines += ["", "## Sums vs the merged-data adapter, on the domains each sum covers", "",
              "Change = perplexity of the sum over the union of its domains' held-out sets (token-weighted) "
              "relative to the baseline's; negative: the sum is better.", ""]
    lines += [markdown_table(["sum", "baseline", "RMS cos", "ppl sum", "ppl baseline", "change %", "per domain %"], [
        [row["sum"], row["baseline"], "–" if row["rms_cosine"] is None else f"{row['rms_cosine']:.4f}",
         f"{row['perplexity_sum']:.3f}", f"{row['perplexity_baseline']:.3f}", f"{row['change_pct']:+.2f}",
         ", ".join(f"{d} {v:+.2f}" for d, v in row["per_domain_change_pct"].items())] for row in result["sums"]],
        align="llrrrrl")]
    r2 = (f"R² = {fit['r2']:.3f}" if fit["r2"] is not None
          else f"R² undefined ({fit['points']} points; needs 3 and a non-constant change)")
    line = ("no line (fewer than two distinct cosines)" if fit["slope"] is None
            else f"change % ≈ {fit['slope']:.2f} · RMS cos {'+' if fit['intercept'] >= 0 else '−'} "
                 f"{abs(fit['intercept']):.2f}")
    lines += ["", f"Least-squares fit over the pairwise sums: {line}; {r2}. Plot: `scatter.png`; "
              "per-layer cosines: `interference.json`, `interference.png`.", ""]
    return "\n".join(lines)
