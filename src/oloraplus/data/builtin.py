"""`builtin:stdlib`: an instruction data set that needs no download.

Built at run time from the docstrings of Python's own standard library: "Explain what
`json.dumps` does." -> the docstring's summary. The same Python version gives the same data;
short responses (at most ~60 words) keep CPU training fast.

The docstrings are read in a clean interpreter (`python -I -S stdlib_docs.py`): what the caller has
imported changes the standard library in place (torch replaces `inspect.getfile`, transformers
adds `logging.Logger.warning_once`), and the data must not depend on that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from oloraplus.data import stdlib_docs
from oloraplus.data.example import Example
from oloraplus.errors import DataError


@lru_cache(maxsize=1)
def _build() -> tuple[Example, ...]:
    # -I also keeps the script's folder off sys.path, where our tokenize.py would shadow the stdlib's
    script = Path(stdlib_docs.__file__)
    done = subprocess.run([sys.executable, "-I", "-S", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"builtin:stdlib: could not read the standard library's docstrings: {last}")
    return tuple(Example((("user", f"Explain what `{name}` does."), ("assistant", text)))
                 for name, text in json.loads(done.stdout))


def stdlib_examples() -> list[Example]:
    """The `builtin:stdlib` data set, in a fixed order: modules and names sorted."""
    return list(_build())
