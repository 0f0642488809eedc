"""Prompt rendering: the model's chat template when it has one, else the classic Alpaca template.

Training (`data.turns`) and generation evaluation both render prompts here, so the model is asked for an
answer exactly the way it was taught to give one. Tool calls (ShareGPT `function_call` turns) go to the
template as OpenAI-style `tool_calls` when it renders them; otherwise they are written as plain text,
`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` (the Hermes/Qwen convention).
"""

from __future__ import annotations

import json
from typing import Any

import jinja2

from oloraplus.data.example import Example
from oloraplus.errors import DataError

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n")
ALPACA_HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n")
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_renders_tool_calls(tokenizer) -> bool:
    """Whether the chat template reads a message's `tool_calls` (Qwen2.5, Llama 3.1, Hermes ... do; ChatML does not)."""
    return has_chat_template(tokenizer) and "tool_calls" in str(tokenizer.chat_template)


def plain_tool_call(content: str) -> str:
    return f"{TOOL_CALL_OPEN}{content.strip()}{TOOL_CALL_CLOSE}"


def _structured_calls(content: str) -> list[dict[str, Any]] | None:
    """A function_call turn's JSON as OpenAI `tool_calls`, or None when it is not a {name, arguments} call."""
    try:
        calls = json.loads(content)
    except ValueError:
        return None
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not calls or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    out = []
    for c in calls:
        arguments = c.get("arguments", {})
        if isinstance(arguments, str):  # some data sets store the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        out.append({"type": "function", "function": {"name": c["name"], "arguments": arguments}})
    return out


def turn_text(example: Example, index: int) -> str:
    """A turn's text as the plain rendering writes it: tool calls wrapped in <tool_call> tags."""
    content = example.messages[index][1]
    return plain_tool_call(content) if index in example.tool_calls else content


def chat_messages(tokenizer, example: Example, upto: int) -> list[dict[str, Any]]:
    """The first `upto` turns as the chat template's messages."""
    structured = template_renders_tool_calls(tokenizer)
    out = []
    for i, (role, content) in enumerate(example.messages[:upto]):
        calls = _structured_calls(content) if structured and i in example.tool_calls else None
        if calls is not None:
            out.append({"role": role, "content": "", "tool_calls": calls})
        else:
            out.append({"role": role, "content": turn_text(example, i)})
    return out


def apply_template(tokenizer, example: Example, upto: int, add_generation_prompt: bool) -> str:
    chat = chat_messages(tokenizer, example, upto)
    try:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=False)
    except jinja2.TemplateError as exc:  # e.g. "roles must alternate user/assistant", or no `tool` role
        roles = "/".join(role for role, _ in example.messages)
        raise DataError(f"the tokenizer's chat template rejects a conversation with roles {roles}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def is_single_turn(example: Example) -> bool:
    return len(example.messages) == 2 and example.messages[0][0] == "user"


def alpaca_prompt(example: Example, upto: int | None = None, eos: str = "") -> str:
    """Single turn: Instruction (and Input) sections; several turns: one `### Role:` block per turn of the first
    `upto` (default: all but the response), earlier assistant turns ending with `eos` as they were trained."""
    upto = len(example.messages) - 1 if upto is None else upto
    if is_single_turn(example):
        user = example.messages[0][1]
        suffix = "\n\n" + example.input
        if example.input and user.endswith(suffix):
            instruction = user[: -len(suffix)]
            return (f"{ALPACA_HEADER_INPUT}### Instruction:\n{instruction}\n\n"
                    f"### Input:\n{example.input}\n\n### Response:\n")
        return f"{ALPACA_HEADER}### Instruction:\n{user}\n\n### Response:\n"
    blocks = "".join(f"### {role.capitalize()}:\n{turn_text(example, i)}{eos if role == 'assistant' else ''}\n\n"
                     for i, (role, _) in enumerate(example.messages[:upto]))
    return f"{ALPACA_HEADER}{blocks}### Assistant:\n"


def prompt_before(tokenizer, example: Example, index: int) -> str:
    """Everything before assistant turn `index`, ending where the model should start writing."""
    if not has_chat_template(tokenizer):
        return alpaca_prompt(example, index, tokenizer.eos_token or "")
    return apply_template(tokenizer, example, index, add_generation_prompt=True)


def render_prompt(tokenizer, example: Example) -> str:
    """Everything before the response: what generation is asked to continue."""
    return prompt_before(tokenizer, example, len(example.messages) - 1)


def render_response(tokenizer, example: Example) -> str:
    """The target text: the response and the end-of-turn token the model must learn to emit."""
    return turn_text(example, len(example.messages) - 1) + (tokenizer.eos_token or "")
