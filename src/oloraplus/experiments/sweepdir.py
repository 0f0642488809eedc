"""A sweep directory's files, and how values are spelled in its run names, labels and tables.

Here rather than in `sweep` so that the report, its runs and its plots read a sweep without importing the
code that trains one (sweep writes the report at the end: neither may import the other's module).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

RUNS_DIR, RESULTS_FILE, PLAN_FILE = "runs", "results.csv", "sweep.json"
DEFAULT_BASELINE: dict[str, Any] = {"method": "olora", "ratio": 1.0}
_MAX_VALUE_CHARS = 40


def format_value(value: Any) -> str:
    """Readable value for names and progress lines: 4.0 -> '4', 0.25 -> '0.25', lists joined by '+'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    if isinstance(value, list):
        return "+".join(format_value(v) for v in value)
    return str(value)


def safe_component(text: str) -> str:
    """A name part that cannot leave its directory: only [A-Za-z0-9.+=-], no '..', bounded length.

    Whenever the text had to change (a path like '../../x', a long hub id) a short hash of the
    original is appended, so two different values never share a name.
    """
    safe = re.sub(r"[^A-Za-z0-9.+=-]+", "_", text)
    safe = re.sub(r"\.{2,}", "_", safe).strip("._") or "_"
    if safe != text or len(safe) > _MAX_VALUE_CHARS:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe[:_MAX_VALUE_CHARS].rstrip('._')}-{digest}"
    return safe
