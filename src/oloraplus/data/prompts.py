"""Prompt rendering: the model's chat template when it has one, else the classic Alpaca template.

Training (tokenize.py) and generation evaluation both call render_prompt, so the model is asked
for an answer exactly the way it was taught to give one.
"""

from __future__ import annotations

import jinja2

from oloraplus.data.example import Example
from oloraplus.errors import DataError

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n")
ALPACA_HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def alpaca_prompt(example: Example) -> str:
    """Single turn: Instruction (and Input) sections; several turns: one `### Role:` block per turn."""
    context = example.messages[:-1]
    if len(context) == 1 and context[0][0] == "user":
        user = context[0][1]
        suffix = "\n\n" + example.input
        if example.input and user.endswith(suffix):
            instruction = user[: -len(suffix)]
            return (f"{ALPACA_HEADER_INPUT}### Instruction:\n{instruction}\n\n"
                    f"### Input:\n{example.input}\n\n### Response:\n")
        return f"{ALPACA_HEADER}### Instruction:\n{user}\n\n### Response:\n"
    blocks = "".join(f"### {role.capitalize()}:\n{content}\n\n" for role, content in context)
    return f"{ALPACA_HEADER}{blocks}### Assistant:\n"


def render_prompt(tokenizer, example: Example) -> str:
    """Everything before the response, ending where the model should start writing."""
    if not has_chat_template(tokenizer):
        return alpaca_prompt(example)
    chat = [{"role": role, "content": content} for role, content in example.messages[:-1]]
    try:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError as exc:  # e.g. "roles must alternate user/assistant", or no `tool` role
        roles = "/".join(role for role, _ in example.messages)
        raise DataError(f"the tokenizer's chat template rejects a conversation with roles {roles}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def render_response(tokenizer, example: Example) -> str:
    """The target text: the response and the end-of-turn token the model must learn to emit."""
    return example.response + (tokenizer.eos_token or "")
