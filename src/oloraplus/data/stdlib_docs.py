"""Summaries of the standard library's docstrings, for `builtin:stdlib` (see builtin.py).

Runs as a script in a clean interpreter (`python -I -S stdlib_docs.py` prints JSON), so it
imports nothing but the standard library.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from typing import Any, Iterator

MODULES = tuple(sorted((
    "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmath", "codecs", "collections",
    "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "functools", "getopt",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "linecache", "locale", "logging", "lzma", "math", "mimetypes", "operator",
    "os", "os.path", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "pprint", "queue", "quopri", "random",
    "re", "reprlib", "sched", "secrets", "selectors", "shlex", "shutil", "signal", "smtplib", "socket",
    "sqlite3", "statistics", "string", "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap",
    "threading", "time", "timeit", "tokenize", "traceback", "types", "typing", "unicodedata", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile", "zlib",
)))
MAX_WORDS = 60
MIN_WORDS = 3
# "heappush(heap, item) -> None" or "S.find(sub[, start]) -> int": a signature, not a description
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


def summary(doc: str) -> str:
    """First paragraph of a docstring, whitespace-normalised, signature lines skipped, capped in words."""
    lines = inspect.cleandoc(doc).splitlines()
    while lines and (not lines[0].strip() or _SIGNATURE.match(lines[0].strip())):
        lines.pop(0)
    paragraph: list[str] = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line.strip())
    words = " ".join(paragraph).split()
    return " ".join(words[:MAX_WORDS]) + (" ..." if len(words) > MAX_WORDS else "")


def _defined_here(obj: Any, module_name: str, module: Any) -> bool:
    """Skip re-exports (documented where they are defined) but keep C halves such as `_heapq`, `posix`."""
    home = getattr(obj, "__module__", None)
    if home is None or home in (module_name, module.__name__) or home.startswith(module_name + "."):
        return True
    return home in ("_" + module_name.rsplit(".", 1)[-1], "posix", "nt")


def _is_routine(member: Any) -> bool:
    return inspect.isroutine(member) or isinstance(member, (classmethod, staticmethod))


def _members(module_name: str) -> Iterator[tuple[str, Any]]:
    """(dotted name, object) for public functions, classes and their own methods, sorted by name."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # e.g. a Python built without sqlite3
        return
    # __all__ too: concurrent.futures (for one) loads names lazily, so vars() alone depends on history
    for name in sorted(set(vars(module)) | set(getattr(module, "__all__", ()))):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if not _defined_here(obj, module_name, module):
            continue
        yield f"{module_name}.{name}", obj
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if not attr.startswith("_") and _is_routine(vars(obj)[attr]):
                    yield f"{module_name}.{name}.{attr}", vars(obj)[attr]


def collect() -> list[tuple[str, str]]:
    """(dotted name, summary) pairs, in order; run in the clean interpreter by _build."""
    seen_names: set[str] = set()
    seen_objects: set[int] = set()
    pairs = []
    for module_name in MODULES:
        for qualname, obj in _members(module_name):
            # own __doc__ only: inspect.getdoc would copy a base class's text onto undocumented overrides
            doc = getattr(obj, "__doc__", None)
            text = summary(doc) if isinstance(doc, str) else ""
            if len(text.split()) < MIN_WORDS or qualname in seen_names or id(obj) in seen_objects:
                continue
            seen_names.add(qualname)
            seen_objects.add(id(obj))
            pairs.append((qualname, text))
    return pairs


if __name__ == "__main__":
    json.dump(collect(), sys.stdout)
