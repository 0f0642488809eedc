"""Template placeholders left in replies (`{{name}}`) would be trained literally: say so before training.

Data sets generated from templates sometimes ship unfilled slots in every reply; the model then learns to
write `{{name}}`. A few may be legitimate (replies that teach Jinja or Handlebars), so only more than
`HANDFUL` replies raise the warning, which gives their count and the first one.
"""

from __future__ import annotations

import re
from typing import Sequence

from oloraplus.data.example import Example
from oloraplus.data.turns import trained_turns

PLACEHOLDER = re.compile(r"\{\{[^{}\n]{1,80}\}\}")
HANDFUL = 5


def placeholder_replies(examples: Sequence[Example], train_turns: str = "all") -> tuple[int, str | None]:
    """(number of trained replies holding a placeholder, where the first one is and what it is)."""
    count, first = 0, None
    for n, example in enumerate(examples):
        for i in trained_turns(example, train_turns):
            match = PLACEHOLDER.search(example.messages[i][1])
            if match:
                count += 1
                first = first or f"{match.group(0)[:40]!r} in record {n} (0-based)"
    return count, first


def placeholder_warning(count: int, first: str | None) -> str | None:
    """The warning line for `placeholder_replies`' result, or None for a handful or fewer."""
    if count <= HANDFUL:
        return None
    return (f"warning: {count:,} trained replies contain template placeholders such as {first}; they will be "
            "trained literally: fill them in or drop those records")
