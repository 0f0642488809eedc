"""The one Markdown table writer: sweep, tune, compose-study and bench reports all go through it."""

from __future__ import annotations

from typing import Any, Sequence


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A pipe table, one line per row; cells are written with str().

    `align` has one letter per column, l(eft) or r(ight), written as `| --- | ---: |`; without it the rule
    is the bare `|---|---|` the sweep and tune reports have always had (their committed bytes stay the same).
    """
    if align is None:
        rule = "|" + "|".join("---" for _ in header) + "|"
    else:
        if len(align) != len(header) or set(align) - {"l", "r"}:
            raise ValueError(f"align {align!r}: one of l/r per column ({len(header)})")
        rule = "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"
    lines = ["| " + " | ".join(map(str, header)) + " |", rule]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
