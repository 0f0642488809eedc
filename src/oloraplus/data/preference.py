"""Preference and KTO files are refused by name: supervised fine-tuning would learn their bad replies.

A DPO/ORPO record pairs a `chosen` with a `rejected` reply; a KTO record marks each reply desirable or not
with a boolean `label` (TRL) or `kto_tag` (LLaMA-Factory). Read as SFT data, the rejected or undesirable
replies would become training targets, so the whole file is refused, before any model loads.
"""

from __future__ import annotations

from typing import Any

from oloraplus.errors import DataError


def preference_kind(record: Any) -> str | None:
    """'preference' (chosen/rejected), 'KTO' (a boolean label or kto_tag), or None for an SFT record."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record and "rejected" in record:
        return "preference"
    if isinstance(record.get("label"), bool) or isinstance(record.get("kto_tag"), bool):
        return "KTO"
    return None


def refuse_preference(record: Any, where: str) -> None:
    """A one-line DataError when `record` is preference or KTO data."""
    kind = preference_kind(record)
    if kind == "preference":
        raise DataError(f"{where}: this is preference data (DPO/ORPO: 'chosen' and 'rejected' replies); SFT cannot "
                        "use it: keep only the chosen replies, in an SFT format (see docs/data.md)")
    if kind == "KTO":
        key = "label" if isinstance(record.get("label"), bool) else "kto_tag"
        raise DataError(f"{where}: this is KTO data (a true/false '{key}' marks desirable replies); SFT cannot use "
                        f"it, it would train on the undesirable replies too: keep only the records with {key} true "
                        "and drop the field")
