"""Prompt rendering: the model's chat template when it has one, else the Alpaca template."""

from __future__ import annotations

from oloraplus.data.formats import Example

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n")
ALPACA_HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _alpaca(messages: tuple[tuple[str, str], ...]) -> str:
    if len(messages) == 1 and messages[0][0] == "user":
        instruction, _, extra = messages[0][1].partition("\n\n")
        if extra:
            return f"{ALPACA_HEADER_INPUT}### Instruction:\n{instruction}\n\n### Input:\n{extra}\n\n### Response:\n"
        return f"{ALPACA_HEADER}### Instruction:\n{instruction}\n\n### Response:\n"
    blocks = [f"### {role.capitalize()}:\n{content}\n\n" for role, content in messages]
    return ALPACA_HEADER + "".join(blocks) + "### Assistant:\n"


def render_prompt(tokenizer, example: Example) -> str:
    """Everything before the response, ending where the model should start writing."""
    context = example.messages[:-1]
    if has_chat_template(tokenizer):
        chat = [{"role": role, "content": content} for role, content in context]
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return _alpaca(context)


def render_response(tokenizer, example: Example) -> str:
    """The target text: the response and the end-of-turn token the model must learn to emit."""
    return example.response + (tokenizer.eos_token or "")
