"""builtin:stdlib: large enough, deterministic, de-duplicated, short responses taken from real docstrings."""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys

from oloraplus.data import builtin
from oloraplus.data.builtin import stdlib_examples
from oloraplus.data.stdlib_docs import MAX_WORDS, MODULES, summary

INSTRUCTION = re.compile(r"^Explain what `([\w.]+)` does\.$")


def test_size_order_and_shape():
    examples = stdlib_examples()
    assert len(examples) >= 1500
    assert list(MODULES) == sorted(MODULES)
    names = [INSTRUCTION.match(ex.messages[0][1]).group(1) for ex in examples]
    assert len(set(names)) == len(names)  # de-duplicated
    assert not any(part.startswith("_") for name in names for part in name.split("."))  # no private names
    assert all(len(ex.messages) == 2 and ex.messages[0][0] == "user" for ex in examples)
    assert all(3 <= len(ex.response.split()) <= MAX_WORDS + 1 for ex in examples)  # +1: the "..." marker
    assert all(ex.response == " ".join(ex.response.split()) for ex in examples)  # whitespace-normalised


# The docstrings a fresh interpreter sees (this one imported torch and transformers, which patch some stdlib
# functions, e.g. inspect.getfile): each named object found from the longest module of MODULES its name starts
# with, a class member in the class's own namespace, as the builder reads them.
OWN_DOCS = """
import importlib, inspect, json, sys
modules, names = json.load(sys.stdin)
docs = {}
for dotted in names:
    module_name = max((m for m in modules if dotted.startswith(m + ".")), key=len)
    obj = importlib.import_module(module_name)
    for part in dotted[len(module_name) + 1:].split("."):
        obj = vars(obj)[part] if inspect.isclass(obj) else getattr(obj, part)
    docs[dotted] = obj.__doc__
json.dump(docs, sys.stdout)
"""


def fresh_docstrings(names: list[str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-I", "-c", OWN_DOCS], input=json.dumps([list(MODULES), names]),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_every_entry_is_the_first_paragraph_of_its_own_docstring():
    """Checked against whatever this Python's docstrings say (their text changes between versions): the response
    is the docstring's first paragraph (after leading signature lines, which C functions may have, or with a line
    the builder does not read as one, such as "defaultdict(...) --> dict"), whitespace-normalised and cut to
    MAX_WORDS."""
    by_name = {INSTRUCTION.match(ex.messages[0][1]).group(1): ex.response for ex in stdlib_examples()}
    assert {"json.dumps", "heapq.heappush", "os.path.join", "collections.OrderedDict"} <= set(by_name)
    assert "pathlib.S_ISFIFO" not in by_name  # re-exported from stat, not pathlib's own
    docs = fresh_docstrings(sorted(by_name))
    for name, response in by_name.items():
        lines = inspect.cleandoc(docs[name]).splitlines()
        unsigned = list(lines)
        while unsigned and (not unsigned[0].strip() or re.match(r"[\w.]+\(.*\)", unsigned[0])):  # signatures
            unsigned.pop(0)
        words = response.removesuffix(" ...").split()
        paragraphs = [" ".join("\n".join(text).split("\n\n")[0].split()).split() for text in (unsigned, lines)]
        assert any(words == paragraph[:len(words)] and response.endswith(" ...") == (len(paragraph) > MAX_WORDS)
                   for paragraph in paragraphs), name


def test_same_data_in_a_fresh_interpreter():
    """This process imported torch and transformers (which patch inspect and logging); a fresh one did not."""
    code = ("import json; from oloraplus.data.builtin import stdlib_examples; "
            "print(json.dumps([e.messages for e in stdlib_examples()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[list(m) for m in ex.messages] for ex in stdlib_examples()]


def test_caller_patches_to_the_stdlib_do_not_leak_in(monkeypatch):
    def shout(self, msg):
        """Log a message in capital letters, loudly and clearly."""

    monkeypatch.setattr(logging.Logger, "shout", shout, raising=False)
    fresh = builtin._build.__wrapped__()
    assert not any("logging.Logger.shout" in ex.messages[0][1] for ex in fresh)
    assert list(fresh) == stdlib_examples()


def test_summary_rules():
    doc = """dumps(obj, indent=None) -> str

        Serialize   obj to a
        JSON string.

        More detail that is not part of the summary.
        """
    assert summary(doc) == "Serialize obj to a JSON string."
    long = " ".join(f"w{i}" for i in range(100))
    assert summary(long) == " ".join(f"w{i}" for i in range(MAX_WORDS)) + " ..."
    assert summary("f(x)\n\n") == ""
