"""Tokenizers for the data tests, trained in the test session (byte-level BPE, a few ms): no hub, any text encodes.

`core` is the raw `tokenizers.Tokenizer`, kept as an independent reference: tests encode
hand-written strings with it and compare with what the data layer produced.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response: ### User: ### Assistant: user assistant system tool",
    "Explain what the function does. Return the sum of a list of numbers. The answer is 42.",
]
# ChatML, as SmolLM2 and Qwen use it
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# a template in the style of Llama 2's, which refuses anything but alternating user/assistant turns
STRICT = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)


@dataclass
class Tok:
    hf: PreTrainedTokenizerFast
    core: Tokenizer  # reference encoder, without the BOS post-processor


def make_tokenizer(chat_template: str | None = None, pad: bool = True) -> Tok:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 10, trainer=trainer)
    reference = Tokenizer.from_str(core.to_str())
    # BOS on encode(add_special_tokens=True), as Llama tokenizers do
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    eos = "<|im_end|>" if chat_template else "</s>"
    hf = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token=eos,
                                 pad_token="<pad>" if pad else None)
    if chat_template:
        hf.chat_template = chat_template
    return Tok(hf, reference)
