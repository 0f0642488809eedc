"""Paths as committed reports show them: never the absolute paths of the machine that made them.

A report or command line in `results/` is read on other machines; `/home/alice/sweeps/x` says
nothing there and leaks a user name. Absolute paths are shown relative to the working directory
(normally the repository root) when they lie inside it, else by their last component only.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def portable_path(path: str | Path, root: str | Path | None = None) -> str:
    """`path` relative to `root` (default: the working directory) if inside it, else its name; relative
    paths are returned unchanged."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    absolute, base = Path(os.path.normpath(text)), Path(os.path.normpath(os.path.abspath(root or Path.cwd())))
    try:
        return absolute.relative_to(base).as_posix() or "."
    except ValueError:
        return absolute.name or text


def portable_command(command: str, root: str | Path | None = None) -> str:
    """A shell command line with every absolute path argument (also `--flag=/abs`) made portable."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: not a command we wrote; leave it
        return command
    out = []
    for word in words:
        flag, eq, value = word.partition("=")
        if eq and flag.startswith("-"):
            out.append(f"{flag}={portable_path(value, root)}")
        else:
            out.append(portable_path(word, root))
    return shlex.join(out)
