"""The shapes every data source is read into: a conversation (`Example`) or a plain-text document (`Document`)."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Example:
    """(role, content) turns; the last one is the assistant response that generation metrics compare against.

    Every assistant turn carries loss (`--train-turns all`) except those listed in `no_loss` (a per-message
    `loss_weight` of 0). `tool_calls` lists the assistant turns that are tool calls (ShareGPT `function_call`,
    their content the call's JSON), rendered in the chat template's tool-call format (`data.turns`).
    `input` keeps Alpaca's optional input apart (it is also appended to the user turn) so the Alpaca template
    can show it as its own section.
    """

    messages: tuple[tuple[str, str], ...]
    input: str = ""
    no_loss: frozenset[int] = frozenset()
    tool_calls: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1][0] != "assistant":
            raise ValueError("an Example must end with the assistant response")
        bad = [role for role, _ in self.messages if role not in ROLES]
        if bad:
            raise ValueError(f"unknown role {bad[0]!r}; expected one of {ROLES}")
        marked = self.no_loss | self.tool_calls
        if any(not 0 <= i < len(self.messages) or self.messages[i][0] != "assistant" for i in marked):
            raise ValueError("no_loss and tool_calls must index assistant turns")

    @property
    def response(self) -> str:
        return self.messages[-1][1]

    def assistant_turns(self) -> list[int]:
        return [i for i, (role, _) in enumerate(self.messages) if role == "assistant"]


@dataclass(frozen=True)
class Document:
    """Plain text for continued pretraining: every token carries loss; there is no prompt and no reference reply."""

    text: str
