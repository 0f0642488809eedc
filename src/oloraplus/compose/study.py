"""`oloraplus compose-study SPEC.yaml --output DIR`: do summed domain adapters match training on the merged data?

Cao, Truong & Lizarraga ("Efficient Modular Learning through Naive LoRA Summation") train one LoRA per
domain, add them (ΔW = Σ_i ΔW_i) and compare with one LoRA trained on the merged data; the perplexity
a pairwise sum loses grew roughly linearly with the RMS over layers of cos(ΔW_i, ΔW_j).

    base:     {option: value}    any `train` option shared by every training (not data/output/...)
    domains:  {name: SOURCE}     or {name: {data: SOURCE, train_size: N, eval_size: N}}; at least two
    merged:   {option: value}    training length/optimiser overrides for the merged-data runs only
    baseline: all | per_sum      one merged run on all domains (default), or one per evaluated sum

Every training is an ordinary `train(cfg)` run in DIR/runs/<name>. A domain run reads its own source
with the study's train_size/eval_size/seed, so the recipe's split is the study's split. A merged run
reads DIR/data/merged-<digest>.jsonl, laid out so the recipe's seeded split returns exactly the shuffled
union of the domain train splits for training and the union of the held-out sets for its eval.
Finished runs whose recorded config matches are skipped; one with another config is refused.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import math
import random
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from oloraplus import rundir
from oloraplus.adapters import registry
from oloraplus.config import TrainConfig, build_config, read_yaml
from oloraplus.data.formats import Example, load_examples
from oloraplus.data.split import split_examples
from oloraplus.errors import ConfigError, DataError
from oloraplus.io import atomic_write_text
from oloraplus.paths import portable_command, portable_path
from oloraplus.rundir import config_differences, read_metrics, recorded_config

SPEC_KEYS = ("base", "domains", "merged", "baseline")
DOMAIN_KEYS = ("data", "train_size", "eval_size")
SET_BY_STUDY = ("data", "output", "overwrite", "resume")  # per run; train_size/eval_size in base are defaults
MERGED_KEYS = ("max_steps", "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio")
BASELINES = ("all", "per_sum")
COMPOSABLE = tuple(m.name for m in registry.methods() if m.composable)  # plain base-relative LoRA: deltas add
MERGED = "merged"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Domain:
    name: str
    data: str
    train_size: int
    eval_size: int


@dataclass(frozen=True)
class StudySpec:
    source: str
    base: dict[str, Any]
    domains: tuple[Domain, ...]
    merged: dict[str, Any]
    baseline: str

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]


@dataclass(frozen=True)
class Training:
    name: str  # run directory under DIR/runs
    domains: tuple[str, ...]  # the domains it trained on
    config: TrainConfig


def _mapping(value: Any, where: str) -> dict[str, Any]:
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k).replace("-", "_"): v for k, v in value.items()}


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _domain(name: Any, value: Any, defaults: TrainConfig, source: str) -> Domain:
    where = f"{source}: domains: {name}"
    if not isinstance(name, str) or not _NAME.match(name) or name == "base" or name.startswith(MERGED):
        raise ConfigError(f"{where}: a domain name is letters, digits, '_', '.', '-', "
                          f"and not 'base' or '{MERGED}...'")
    values = {"data": value} if isinstance(value, str) else _mapping(value, where)
    unknown = [k for k in values if k not in DOMAIN_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (expected {', '.join(DOMAIN_KEYS)})")
    if not isinstance(values.get("data"), str) or not values["data"]:
        raise ConfigError(f"{where}: 'data' must name a data file or builtin")
    return Domain(name, values["data"], _size(values.get("train_size", defaults.train_size), f"{where}: train_size"),
                  _size(values.get("eval_size", defaults.eval_examples()), f"{where}: eval_size"))


def spec_from_mapping(raw: dict[str, Any], source: str) -> StudySpec:
    """Validate a study mapping; every error names the file and the key."""
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key '{unknown[0]}' (expected {', '.join(SPEC_KEYS)}; "
                          "training options go under base:)")
    base = _mapping(raw.get("base"), f"{source}: base")
    managed = [k for k in base if k in SET_BY_STUDY]
    if managed:
        raise ConfigError(f"{source}: base: key '{managed[0]}' is set by the study for each run; remove it")
    defaults = build_config(TrainConfig, base, f"{source}: base")
    if defaults.method not in COMPOSABLE:
        raise ConfigError(f"{source}: base: method '{defaults.method}' does not save a plain LoRA, so its adapters "
                          f"cannot be summed; choose one of {', '.join(COMPOSABLE)}")
    domains = raw.get("domains")
    if not isinstance(domains, dict) or len(domains) < 2:
        raise ConfigError(f"{source}: domains: need a mapping of at least two name: data entries")
    merged = _mapping(raw.get("merged"), f"{source}: merged")
    bad = [k for k in merged if k not in MERGED_KEYS]
    if bad:
        raise ConfigError(f"{source}: merged: key '{bad[0]}' cannot differ from the domain runs "
                          f"(allowed: {', '.join(MERGED_KEYS)})")
    build_config(TrainConfig, merged, f"{source}: merged")  # types
    baseline = raw.get("baseline", "all")
    if baseline not in BASELINES:
        raise ConfigError(f"{source}: baseline: expected one of {', '.join(BASELINES)}, got {baseline!r}")
    return StudySpec(source, base, tuple(_domain(n, v, defaults, source) for n, v in domains.items()),
                     merged, baseline)


def read_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found")
    return spec_from_mapping(read_yaml(path), str(path))


def sums(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every pair, then all domains together (once: with two domains the pair is the full sum)."""
    return list(itertools.combinations(names, 2)) + ([tuple(names)] if len(names) > 2 else [])


def label(domains: Sequence[str]) -> str:
    return "+".join(domains)


def arrange_for_split(train: list, held: list, seed: int) -> list:
    """A list that `split_examples(it, len(train), len(held), seed)` splits back into (train, held), in order."""
    order = list(range(len(train) + len(held)))
    random.Random(seed).shuffle(order)  # the permutation split_examples draws
    arranged: list = [None] * len(order)
    for position, item in zip(order, held + train):  # eval takes order[:n_eval], train the rest
        arranged[position] = item
    return arranged


def _record(example: Example, alpaca: bool) -> dict[str, Any]:
    if not alpaca:
        return {"messages": [{"role": role, "content": text} for role, text in example.messages]}
    user = example.messages[0][1]
    instruction = user[: -len("\n\n" + example.input)] if example.input else user
    return {"instruction": instruction, "input": example.input, "output": example.response}


def merged_jsonl(examples: Sequence[Example]) -> str:
    """Alpaca records when every example is one user turn (keeps `input`), else chat `messages` records."""
    alpaca = all([role for role, _ in ex.messages] == ["user", "assistant"] for ex in examples)
    return "".join(json.dumps(_record(ex, alpaca), ensure_ascii=False) + "\n" for ex in examples)


def check_merged_file(path: Path, train: list, held: list, seed: int, tokenizer) -> None:
    """The merged run must see each example exactly as its domain run does: same prompt, same response."""
    from oloraplus.data.prompts import render_prompt

    got_train, got_held = split_examples(load_examples(str(path)), len(train), len(held), seed)
    for i, (got, want) in enumerate(zip(got_train + got_held, train + held)):
        if got.response != want.response or render_prompt(tokenizer, got) != render_prompt(tokenizer, want):
            raise DataError(f"{path}: merged example {i} renders differently from its domain's record "
                            "(an Alpaca 'input' mixed with multi-turn data needs a model with a chat template)")


def merged_split(splits: dict[str, tuple[list, list]], domains: Sequence[str], seed: int) -> tuple[list, list]:
    """The merged data: the domains' train splits concatenated and shuffled, and their held-out sets."""
    train = [ex for name in domains for ex in splits[name][0]]
    random.Random(seed).shuffle(train)
    return train, [ex for name in domains for ex in splits[name][1]]


def plan_trainings(spec: StudySpec, splits: dict[str, tuple[list, list]], output: Path
                   ) -> tuple[list[Training], dict[str, str]]:
    """One run per domain and the merged run(s); also {merged data path: JSONL text} to write."""
    seed = build_config(TrainConfig, spec.base, spec.source).seed
    runs, files = [], {}

    def config(values: dict[str, Any], name: str) -> TrainConfig:
        values = {**spec.base, **values, "output": str(output / "runs" / name), "overwrite": True}
        try:
            return build_config(TrainConfig, values, spec.source).validate()
        except ConfigError as exc:
            raise ConfigError(f"{spec.source}: run {name}: {exc}") from None

    for d in spec.domains:
        runs.append(Training(d.name, (d.name,), config(
            {"data": d.data, "train_size": d.train_size, "eval_size": d.eval_size}, d.name)))
    subsets = [tuple(spec.names)] + ([s for s in sums(spec.names) if len(s) < len(spec.names)]
                                     if spec.baseline == "per_sum" else [])
    for subset in subsets:
        train, held = merged_split(splits, subset, seed)
        text = merged_jsonl(arrange_for_split(train, held, seed))
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        path = output.resolve() / "data" / f"{MERGED}-{digest}.jsonl"  # content-addressed: new data, new config
        files[str(path)] = text
        name = MERGED if len(subset) == len(spec.names) else f"{MERGED}-{label(subset)}"
        runs.append(Training(name, subset, config(
            {**spec.merged, "data": str(path), "train_size": len(train), "eval_size": len(held)}, name)))
    return runs, files


def is_finished(run: Training) -> bool:
    """True when the run directory holds this exact run; ConfigError when it holds a different one."""
    final = Path(run.config.output)
    if not (final / "metrics.json").is_file():
        return False
    recorded = recorded_config(final)
    if recorded and run.name.startswith(MERGED):  # named by its digest: a moved or copied study still resumes
        recorded = {**recorded, "data": str(Path(run.config.data).with_name(Path(str(recorded.get("data"))).name))}
    differences = config_differences(run.config, recorded)
    if differences:
        raise ConfigError(f"compose-study: {final} holds a finished run with a different config "
                          f"({'; '.join(differences[:3])}); use another --output or delete that run")
    return True


def _write_sum(output: Path, subset: tuple[str, ...]) -> Path:
    from oloraplus.compose.io import read_adapter
    from oloraplus.compose.sum import sum_adapters, write_adapter

    adapters = [read_adapter(output / "runs" / name) for name in subset]
    config, tensors = sum_adapters(adapters)  # ΔW = Σ_i ΔW_i (Cao et al.'s naive sum)
    target = output / "sums" / label(subset)
    shutil.rmtree(target, ignore_errors=True)  # derived from the runs: rebuilt on every study
    meta = {"base_fingerprint": adapters[0].fingerprint, "base_model": adapters[0].base_model, "method": "compose"}
    return write_adapter(config, tensors, target, meta=meta)


def pooled(scores: dict[str, dict], domains: Sequence[str]) -> float:
    """Perplexity over the union of the domains' held-out sets: token-weighted, like evaluate_loss."""
    tokens = sum(scores[d]["eval_tokens"] for d in domains)
    nll = sum(scores[d]["eval_loss"] * scores[d]["eval_tokens"] for d in domains)
    return math.exp(nll / tokens) if nll / tokens < 700 else math.inf


def change_pct(value: float, reference: float) -> float:
    return 100.0 * (value / reference - 1.0)


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Least-squares y = slope·x + intercept and R²; R² is undefined below three points or for constant y."""
    import numpy as np

    if len(x) < 2 or len(set(x)) < 2:
        return {"points": len(x), "slope": None, "intercept": None, "r2": None}
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    residual = np.asarray(y) - (slope * np.asarray(x) + intercept)
    total = float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if len(x) >= 3 and total > 0 else None
    return {"points": len(x), "slope": float(slope), "intercept": float(intercept), "r2": r2}


def compare(spec: StudySpec, ppl: dict[str, dict], overall: list[list[float]]) -> list[dict[str, Any]]:
    """Each sum against its merged-data baseline on the domains it covers (Cao et al.'s perplexity change)."""
    index = {name: i for i, name in enumerate(spec.names)}
    rows = []
    for subset in sums(spec.names):
        key = label(subset)
        baseline = MERGED if spec.baseline == "all" or len(subset) == len(spec.names) else f"{MERGED}-{key}"
        rows.append({
            "sum": key, "domains": list(subset), "baseline": baseline,
            "rms_cosine": overall[index[subset[0]]][index[subset[1]]] if len(subset) == 2 else None,
            "perplexity_sum": pooled(ppl[key], subset), "perplexity_baseline": pooled(ppl[baseline], subset),
            "per_domain_change_pct": {d: change_pct(ppl[key][d]["perplexity"], ppl[baseline][d]["perplexity"])
                                      for d in subset},
        })
        rows[-1]["change_pct"] = change_pct(rows[-1]["perplexity_sum"], rows[-1]["perplexity_baseline"])
    return rows


def plot_scatter(pairs: list[dict[str, Any]], fit: dict[str, Any], path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, y = [p["rms_cosine"] for p in pairs], [p["change_pct"] for p in pairs]
    ax.scatter(x, y, zorder=3)
    for p in pairs:
        ax.annotate(p["sum"], (p["rms_cosine"], p["change_pct"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    if fit["slope"] is not None:
        xs = np.linspace(min(x), max(x), 50)
        r2 = f"R² = {fit['r2']:.3f}" if fit["r2"] is not None else f"R² undefined ({fit['points']} points)"
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], "--", label=f"least squares, {r2}")
        ax.legend(fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("RMS over layers of cos(ΔW_i, ΔW_j)")
    ax.set_ylabel("perplexity change vs merged-data adapter (%)")
    ax.set_title("Pairwise adapter sums (Cao et al.)")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _table(header: list[str], align: str, rows: list[list[Any]]) -> list[str]:
    """Markdown table; `align` has one letter per column: l(eft) or r(ight)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def report_markdown(spec: StudySpec, result: dict[str, Any]) -> str:
    names, ppl, fit = spec.names, result["perplexity"], result["fit"]
    lines = ["# Compose study: summed domain adapters vs the merged-data adapter", "",
             f"Command: `{portable_command(result['command'] or shlex.quote(spec.source))}`", ""]
    lines += _table(["domain", "data", "train", "held-out"], "llrr", [
        [d, f"`{portable_path(v['data'])}`", v["train_examples"], v["heldout_examples"]]
        for d, v in result["domains"].items()])
    lines += ["", "Trainings (a sum costs the steps of its domain runs together):", ""]
    lines += _table(["run", "trained on", "examples", "steps", "tokens", "own eval loss"], "llrrrr", [
        [name, label(run["domains"]), m["train_examples"], m["steps"], m["train_tokens"], f"{m['eval_loss']:.4f}"]
        for name, run in result["runs"].items() for m in [run["metrics"]]])
    lines += ["", "## Held-out perplexity (lower is better)", ""]
    lines += _table(["model", *names], "l" + "r" * len(names),
                    [[v, *(f"{ppl[v][d]['perplexity']:.3f}" for d in names)] for v in ppl])
    lines += ["", "## Sums vs the merged-data adapter, on the domains each sum covers", "",
              "Change = perplexity of the sum over the union of its domains' held-out sets (token-weighted) "
              "relative to the baseline's; negative: the sum is better.", ""]
    lines += _table(["sum", "baseline", "RMS cos", "ppl sum", "ppl baseline", "change %", "per domain %"], "llrrrrl", [
        [row["sum"], row["baseline"], "–" if row["rms_cosine"] is None else f"{row['rms_cosine']:.4f}",
         f"{row['perplexity_sum']:.3f}", f"{row['perplexity_baseline']:.3f}", f"{row['change_pct']:+.2f}",
         ", ".join(f"{d} {v:+.2f}" for d, v in row["per_domain_change_pct"].items())] for row in result["sums"]])
    r2 = (f"R² = {fit['r2']:.3f}" if fit["r2"] is not None
          else f"R² undefined ({fit['points']} points; needs 3 and a non-constant change)")
    line = ("no line (fewer than two distinct cosines)" if fit["slope"] is None
            else f"change % ≈ {fit['slope']:.2f} · RMS cos {'+' if fit['intercept'] >= 0 else '−'} "
                 f"{abs(fit['intercept']):.2f}")
    lines += ["", f"Least-squares fit over the pairwise sums: {line}; {r2}. Plot: `scatter.png`; "
              "per-layer cosines: `interference.json`, `interference.png`.", ""]
    return "\n".join(lines)


def _train_missing(spec: StudySpec, splits: dict, trainings: list[Training], done: list[bool],
                   files: dict[str, str], tokenizer) -> None:
    """Write the merged data (checked against the domain records) and train every run not finished earlier."""
    from oloraplus.train import recipe

    seed = build_config(TrainConfig, spec.base, spec.source).seed
    for file, text in files.items():
        if not Path(file).is_file():
            atomic_write_text(file, text)
    for run in trainings[len(spec.domains):]:
        check_merged_file(Path(run.config.data), *merged_split(splits, run.domains, seed), seed, tokenizer)
    for index, (run, finished) in enumerate(zip(trainings, done), start=1):
        note = "  (finished earlier, skipped)" if finished else ""
        print(f"[{index}/{len(trainings)}] train {run.name} on {label(run.domains)}{note}", file=sys.stderr, flush=True)
        if not finished:
            result = recipe.train(run.config)
            del result  # free the trained model before the next run
            gc.collect()


def _evaluate_variants(loaded, variants: dict[str, Path | None], heldout: dict, batch_size: int) -> dict:
    """{variant: {domain: loss}}: the base loaded once, each adapter put on and taken off again."""
    from oloraplus.adapters.export import load_adapter
    from oloraplus.data.collate import CausalLMCollator
    from oloraplus.eval.loss import evaluate_loss

    collator = CausalLMCollator(pad_token_id=loaded.tokenizer.pad_token_id)
    base, ppl = loaded.model, {}
    for variant, adapter in variants.items():
        print(f"evaluate {variant} on {', '.join(heldout)}", file=sys.stderr, flush=True)
        model = load_adapter(base, adapter) if adapter is not None else base
        ppl[variant] = {name: evaluate_loss(model, ds, collator, batch_size=batch_size) for name, ds in heldout.items()}
        base = model.unload() if adapter is not None else base  # the untouched base weights again
    return ppl


def run_study(path: str | Path, output: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Train what is missing, evaluate every variant on every domain, write the study files; returns study.json."""
    spec = read_spec(path)  # spec and output are checked before torch and the data load
    output = rundir.check_output_dir(output, what="compose study", own=("study.json", f"data/{MERGED}-*.jsonl"))

    import torch

    from oloraplus import models
    from oloraplus.compose.interference import interference, write_interference
    from oloraplus.compose.io import read_adapter
    from oloraplus.data.tokenize import encode_examples

    base = build_config(TrainConfig, spec.base, spec.source)
    splits = {}
    for d in spec.domains:
        try:
            splits[d.name] = split_examples(load_examples(d.data), d.train_size, d.eval_size, base.seed)
        except DataError as exc:
            raise DataError(f"{spec.source}: domains: {d.name}: {exc}") from None
    trainings, files = plan_trainings(spec, splits, output)
    done = [is_finished(run) for run in trainings]  # refuse a directory holding other runs before any work
    loaded = models.load_model(base.model, trust_remote_code=base.trust_remote_code)
    loaded.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    _train_missing(spec, splits, trainings, done, files, loaded.tokenizer)

    heldout = {d: encode_examples(splits[d][1], loaded.tokenizer, base.max_length)[0] for d in spec.names}
    variants: dict[str, Path | None] = {"base": None}  # label -> adapter directory
    variants.update({name: output / "runs" / name / "adapter" for name in spec.names})
    variants.update({label(s): _write_sum(output, s) for s in sums(spec.names)})
    variants.update({run.name: Path(run.config.output) / "adapter" for run in trainings[len(spec.domains):]})
    ppl = _evaluate_variants(loaded, variants, heldout, base.batch_size)

    diagnostic = interference([read_adapter(output / "runs" / name) for name in spec.names])
    write_interference(diagnostic, output)
    comparisons = compare(spec, ppl, diagnostic.overall.tolist())
    pairs = [row for row in comparisons if row["rms_cosine"] is not None]
    fit = fit_line([p["rms_cosine"] for p in pairs], [p["change_pct"] for p in pairs])
    result = {
        "command": command, "spec": {"source": portable_path(spec.source), "base": spec.base, "merged": spec.merged,
                                     "baseline": spec.baseline},
        "domains": {d.name: {"data": portable_path(d.data), "train_examples": len(splits[d.name][0]),
                             "heldout_examples": len(splits[d.name][1])} for d in spec.domains},
        "runs": {run.name: {"domains": list(run.domains), "metrics": read_metrics(Path(run.config.output))}
                 for run in trainings},
        "perplexity": ppl, "rms_cosine": {"adapters": diagnostic.names, "matrix": diagnostic.overall.tolist()},
        "sums": comparisons, "fit": fit,
    }
    atomic_write_text(output / "study.json", json.dumps(result, indent=2) + "\n")  # keeps the table order
    plot_scatter(pairs, fit, output / "scatter.png")
    atomic_write_text(output / "study.md", report_markdown(spec, result))
    return result


def study_command(args: argparse.Namespace) -> int:
    command = portable_command(shlex.join(["oloraplus", "compose-study", args.spec, "--output", args.output]))
    result = run_study(args.spec, args.output, command=command)
    for row in result["sums"]:
        cos = "" if row["rms_cosine"] is None else f"  RMS cos {row['rms_cosine']:.4f}"
        print(f"{row['sum']:<30} change vs {row['baseline']}: {row['change_pct']:+.2f} %{cos}")
    print(f"\nreport: {Path(args.output) / 'study.md'}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register `compose-study` on the `oloraplus` subcommand parser."""
    parser = subparsers.add_parser(
        "compose-study", help="train one adapter per domain and one on the merged data; compare their sums",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC.yaml", help="the study definition")
    parser.add_argument("--output", required=True, metavar="DIR", help="study directory (created; reused to resume)")
    parser.set_defaults(func=study_command)

