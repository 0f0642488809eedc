"""Which tokens carry loss: a conversation cut into (text, trained) segments.

Every assistant turn is a target by default (`--train-turns all`, as LLaMA-Factory, axolotl and TRL's
`assistant_only_loss` do), tool calls included; system, user and tool-result turns are context. `last` keeps
only the final reply (earlier turns are context), and a message's `loss_weight` of 0 makes its turn context.

The text before assistant turn i is the template's rendering of turns 0..i-1 with a generation prompt,
minus what earlier segments already hold; the turn itself is its content and the end-of-turn token (or, for
a tool call the template renders, the template's own text of it). This needs each prompt to extend the
previous one; a template that rewrites earlier turns (e.g. dropping reasoning from past replies) does not,
and such a record falls back to its last reply as the only target (`Segments.turn_by_turn` False).
"""

from __future__ import annotations

from dataclasses import dataclass

from oloraplus.config import TRAIN_TURNS
from oloraplus.data.example import Example
from oloraplus.data.prompts import (apply_template, prompt_before, render_prompt,
                                    render_response, template_renders_tool_calls, turn_text)



@dataclass(frozen=True)
class Segments:
    parts: tuple[tuple[str, bool], ...]  # (text, carries loss), in order; the first is the prompt's start
    turn_by_turn: bool  # False: the template does not render turn by turn, only the last reply is trained


def trained_turns(example: Example, train_turns: str = "all") -> list[int]:
    """Indices of the assistant turns that carry loss."""
    turns = example.assistant_turns()
    if train_turns == "last":
        turns = turns[-1:]
    elif train_turns != "all":
        raise ValueError(f"train_turns must be one of {TRAIN_TURNS}, got {train_turns!r}")
    return [i for i in turns if i not in example.no_loss]


def _reply(tokenizer, example: Example, index: int, prompt: str) -> str | None:
    """Assistant turn `index` as trained text; None when the template's rendering does not extend `prompt`."""
    if index in example.tool_calls and template_renders_tool_calls(tokenizer):
        full = apply_template(tokenizer, example, index + 1, add_generation_prompt=False)
        return full[len(prompt):] if full.startswith(prompt) and len(full) > len(prompt) else None
    return turn_text(example, index) + (tokenizer.eos_token or "")


def segments(tokenizer, example: Example, train_turns: str = "all") -> Segments:
    trained = set(trained_turns(example, train_turns))
    parts: list[tuple[str, bool]] = []
    done = ""
    for index in example.assistant_turns():
        prompt = prompt_before(tokenizer, example, index)
        reply = _reply(tokenizer, example, index, prompt) if prompt.startswith(done) else None
        if reply is None:
            last = len(example.messages) - 1
            return Segments(((render_prompt(tokenizer, example), False),
                             (render_response(tokenizer, example), last in trained)), turn_by_turn=False)
        parts += [(prompt[len(done):], False), (reply, index in trained)]
        done = prompt + reply
    return Segments(tuple(parts), turn_by_turn=True)
