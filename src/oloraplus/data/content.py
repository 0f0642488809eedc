"""A message's text and its loss weight, as chat data in the wild writes them.

`content` may be a string or a list of parts: OpenAI-style `{"type": "text", "text": ...}` or LLaMA-Factory's
`{"type": "text", "value": ...}`. Text parts are joined with no separator, as chat templates that accept part
lists print them one after another. Any other part (image, audio, video, file) is refused: oloraplus trains
text-only models. A per-message `loss_weight` (LLaMA-Factory) of 0 or 1 says whether the turn carries loss.
"""

from __future__ import annotations

from typing import Any

from oloraplus.errors import DataError

TEXT_KEYS = ("text", "value")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def part_text(part: Any, where: str) -> str:
    """The text of one content part; a non-text part is a one-line DataError naming its type."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        raise DataError(f"{where}: expected a content part object or a string, got {_type_name(part)}")
    kind = part.get("type", "text")
    if kind != "text":
        raise DataError(f"{where}: part type {str(kind)[:40]!r} is not text: multimodal data is not supported "
                        "(only text parts can be trained)")
    for key in TEXT_KEYS:
        if isinstance(part.get(key), str):
            return part[key]
    raise DataError(f"{where}: a text part needs a string 'text' or 'value' field "
                    f"(keys: {', '.join(sorted(map(str, part))[:6]) or 'none'})")


def content_text(value: Any, where: str) -> str | None:
    """A string content as is; a list of parts joined; None for anything else (the caller names the field)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part_text(part, f"{where}[{i}]") for i, part in enumerate(value))
    return None


def loss_weight(turn: dict, where: str) -> bool:
    """Whether a turn carries loss by its `loss_weight` (missing: yes). Only 0 and 1 are meaningful to a
    cross-entropy over tokens that are either targets or not."""
    if "loss_weight" not in turn:
        return True
    value = turn["loss_weight"]
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise DataError(f"{where}: field 'loss_weight': expected 0 or 1, got {value!r:.20}")
