"""The one shape every data source is read into: a conversation whose last turn is the target response."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Example:
    """(role, content) turns; the last one is the assistant response the loss covers.

    `input` keeps Alpaca's optional input apart (it is also appended to the user turn) so the
    Alpaca template can show it as its own section.
    """

    messages: tuple[tuple[str, str], ...]
    input: str = ""

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1][0] != "assistant":
            raise ValueError("an Example must end with the assistant response")
        bad = [role for role, _ in self.messages if role not in ROLES]
        if bad:
            raise ValueError(f"unknown role {bad[0]!r}; expected one of {ROLES}")

    @property
    def response(self) -> str:
        return self.messages[-1][1]
