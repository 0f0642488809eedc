"""The `train` flag table of docs/training.md, generated from `TrainConfig`: one definition per option, as the
CLI's flags are, so the page cannot drift from `oloraplus train --help`.

    python -m oloraplus.cli.flag_table          # rewrite the table in docs/training.md
    python -m oloraplus.cli.flag_table --check  # exit 1 if the committed table differs (tests do this)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from oloraplus.config import TrainConfig, flag
from oloraplus.markdown import markdown_table

PAGE = Path(__file__).resolve().parents[3] / "docs" / "training.md"
BEGIN = "<!-- BEGIN flag table: generated from TrainConfig by `python -m oloraplus.cli.flag_table`; do not edit -->"
END = "<!-- END flag table -->"
_OWN_DEFAULT = re.compile(r"\s*\(default: [^()]*(\([^()]*\)[^()]*)*\)$")  # a help that states its own default


def _default(value: Any, field_type: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(value) if value else "(auto)"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rows() -> list[tuple[str, str, str]]:
    """(flag, default, meaning) per TrainConfig field, in the dataclass's order."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = f"`{flag(f.name)}` / `--no-{f.name.replace('_', '-')}`" if isinstance(default, bool) else f"`{flag(f.name)}`"
        help_text = f.metadata.get("help", "")
        own = _OWN_DEFAULT.search(help_text)
        shown_default = own.group(0).strip()[len("(default: "):-1] if own else _default(default, f.type)
        meaning = help_text[:own.start()] if own else help_text
        if "choices" in f.metadata:
            meaning += "; one of " + ", ".join(f"`{c}`" for c in f.metadata["choices"])
        if "methods" in f.metadata:
            meaning += " (read only by --method " + ", ".join(f.metadata["methods"]) + ")"
        out.append((name, _cell(shown_default), _cell(meaning)))
    return out


def table() -> str:
    return markdown_table(["flag", "default", "meaning"], rows(), align="lll")


def render(page_text: str) -> str:
    """`page_text` with the block between BEGIN and END replaced by today's table."""
    start, end = page_text.find(BEGIN), page_text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{PAGE}: the markers {BEGIN!r} ... {END!r} are missing")
    return page_text[:start] + BEGIN + "\n\n" + table() + "\n\n" + page_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oloraplus.cli.flag_table", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is stale")
    args = parser.parse_args(argv)
    current = PAGE.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{PAGE} is stale: run python -m oloraplus.cli.flag_table", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
