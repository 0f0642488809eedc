"""What a person sees on the console: a line before each long phase, progress while it runs, one summary at the end.

Only rank 0 prints (under torchrun every rank runs the same code). On a terminal long loops show a tqdm bar;
in a log (stdout not a TTY) they print a plain line now and then instead. `OLORAPLUS_PROGRESS=0` (tests,
benches) silences bars and periodic lines; phase lines and the summary stay.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")
PERIOD_S = 10.0  # seconds between plain progress lines when stdout is a log
TRUNCATED_WARN = 0.10  # warn when more than this fraction of a split was cut at --max-length


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes of this launch: torchrun's WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        from oloraplus.errors import ConfigError

        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not an integer") from None


def progress_enabled() -> bool:
    return os.environ.get("OLORAPLUS_PROGRESS", "1") != "0" and is_main()


def use_bar() -> bool:
    """A redrawn bar only on a terminal: in a log file its carriage returns would be noise."""
    return progress_enabled() and sys.stdout.isatty()


def say(message: str) -> None:
    """One line on rank 0, flushed at once, so a long phase is announced before it starts."""
    if not is_main():
        return
    if use_bar():  # above any open bar (a periodic eval during training) instead of through it
        from tqdm.auto import tqdm

        tqdm.write(message)
    else:
        print(message, flush=True)


def track(items: Iterable[T], total: int, desc: str, unit: str = "batch") -> Iterator[T]:
    """Yield `items`, with a bar on a terminal or a `desc: i/total` line every PERIOD_S seconds in a log."""
    if use_bar():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        return
    show = progress_enabled()
    last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        if show and time.monotonic() - last >= PERIOD_S and done < total:
            say(f"  {desc}: {done}/{total} {unit}")
            last = time.monotonic()


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 step`, `2 steps`, `1,319 records`: a count with its noun in the right number."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def data_warning(stats: dict[str, Any], max_length: int, splits: tuple[str, ...] = ("train", "eval")) -> str | None:
    """One warning when examples were dropped or more than 10 % truncated: the loss then covers less than asked."""
    problems = []
    for split in splits:
        used, cut, dropped = (stats.get(f"{split}_{k}", 0) for k in ("examples", "truncated", "dropped"))
        given = used + dropped
        found = ([f"{cut} of {given} truncated"] if given and cut > TRUNCATED_WARN * given else []) + (
            [f"{dropped} of {given} dropped"] if dropped else [])
        if found:
            problems.append(f"{split} {', '.join(found)}")
    if not problems:
        return None
    why = " (dropped: no reply token left)" if any(stats.get(f"{s}_dropped") for s in splits) else ""
    return (f"warning: examples longer than --max-length {max_length}: {'; '.join(problems)}{why}; "
            "raise --max-length to keep them")


def split_line(stats: dict[str, Any], split: str) -> str:
    """`7 examples (7 truncated, 0 dropped)`: what the loss of this split actually covers.

    Multi-turn records cut before a whole trained turn add `, 2 lost a turn`; plain text counts packed rows."""
    n = stats.get(f"{split}_examples", 0)
    if stats.get("plain_text"):
        return f"{plural(n, 'row')} from {plural(stats.get(f'{split}_documents', 0), 'document')}"
    lost = stats.get(f"{split}_turns_lost", 0)
    return (f"{plural(n, 'example')} ({stats.get(f'{split}_truncated', 0)} truncated, "
            f"{stats.get(f'{split}_dropped', 0)} dropped{f', {lost} lost a trained turn' if lost else ''})")


def data_lines(stats: dict[str, Any], max_length: int, splits: tuple[str, ...] = ("train", "eval")) -> list[str]:
    if "val_examples" in stats and "val" not in splits:  # --val-size: the validation split is counted too
        splits = (*splits, "val")
    records = stats.get("examples_available", 0)
    if stats.get("plain_text"):
        head = (f"data: {plural(records, 'plain-text document')} (continued pretraining: loss on every token, "
                f"packed into rows of {max_length} tokens); ")
    else:
        head = f"data: {plural(records, 'record')}; "
    lines = [head + "; ".join(f"{split} {split_line(stats, split)}" for split in splits)]
    if stats.get("last_turn_only"):
        lines.append(f"note: {plural(stats['last_turn_only'], 'record')}: the chat template re-renders earlier turns, "
                     "so only the last reply carries loss there")
    warning = data_warning(stats, max_length, splits)
    return lines + ([warning] if warning else [])


def _eval_line(m: dict[str, Any]) -> str:
    line = f"eval loss {m['eval_loss']:.4f}, perplexity {m['perplexity']:.2f} over {plural(m.get('eval_tokens', 0), 'token')}"
    if "rougeL" in m:
        line += (f"; ROUGE-L {m['rougeL']:.2f}, BLEU {m.get('bleu', 0.0):.2f} on "
                 f"{plural(m.get('generated_examples', 0), 'generation')}")
    return line


def train_summary(m: dict[str, Any], run_dir: str, max_length: int, wall_s: float) -> list[str]:
    """The block `oloraplus train` ends with: what was used, what came out, how fast, where it is."""
    session = (f" (this session: steps {m['resumed_from_step'] + 1}-{m['steps']}, resumed from step "
               f"{m['resumed_from_step']})" if m.get("resumed_from_step") else "")
    lines = [
        "─" * 60,
        f"train: {split_line(m, 'train')}, {plural(m['steps'], 'step')}, mean train loss {m['train_loss']:.4f}",
        f"eval:  {split_line(m, 'eval')}, {_eval_line(m)}",
        f"speed: {m['tokens_per_s']:.0f} tokens/s, {m['seconds_per_step']:.2f} s/step{session}"
        + (" (compile time excluded)" if m.get("compile_s") else ""),
        f"time:  {wall_s:.1f} s in all (load {m['load_s']:.1f} s, train {m['train_runtime_s']:.1f} s"
        + (f" of which compiling {m['compile_s']:.1f} s)" if m.get("compile_s") else ")"),
    ]
    warning = data_warning(m, max_length)
    return lines + ([warning] if warning else []) + [f"run:   {run_dir}"]


def eval_summary(m: dict[str, Any], run_dir: str, data: str | None, max_length: int, wall_s: float,
                 output: str | None = None) -> list[str]:
    """The block `oloraplus eval` ends with; `data`: the file given with --data (None: the run's eval split);
    `output`: where the scores went (None: the run's metrics.json)."""
    source = data if data is not None else "the run's eval split"
    lines = [
        "─" * 60,
        f"eval:  {split_line(m, 'eval')} of {plural(m.get('examples_available', 0), 'record')} in {source}",
        f"       {_eval_line(m)}",
        f"time:  {wall_s:.1f} s",
    ]
    warning = data_warning(m, max_length, splits=("eval",))
    where = (f"run:   {run_dir} (metrics.json updated)" if output is None
             else f"scores: {output}/eval.json (the run {run_dir} is unchanged)")
    return lines + ([warning] if warning else []) + [where]
