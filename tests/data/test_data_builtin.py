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


def test_known_entries_come_from_the_docstrings():
    by_name = {INSTRUCTION.match(ex.messages[0][1]).group(1): ex.response for ex in stdlib_examples()}
    assert by_name["json.dumps"] == "Serialize ``obj`` to a JSON formatted ``str``."
    # C functions whose docstring opens with a signature line: the signature is skipped
    assert inspect.getdoc(__import__("heapq").heappush).startswith("Push item onto heap")
    assert by_name["heapq.heappush"].startswith("Push item onto heap")
    assert "os.path.join" in by_name and "collections.OrderedDict" in by_name
    assert "pathlib.S_ISFIFO" not in by_name  # re-exported from stat, not pathlib's own


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
