"""Tiny random models of the architectures we target (llama, gpt2, opt, qwen2, gemma): CPU, milliseconds."""

import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tests.conftest import tiny_llama

VOCAB = 128
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A fresh tiny model; the same (arch, seed) gives the same weights."""
    torch.manual_seed(seed)
    if arch == "llama":
        model = tiny_llama(seed=seed, tie_word_embeddings=False, **DECODER)
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**DECODER))
    elif arch == "gemma":
        model = GemmaForCausalLM(GemmaConfig(**DECODER, head_dim=8))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                           bos_token_id=1, eos_token_id=2))
    elif arch == "opt":  # word_embed_proj_dim != hidden_size adds project_in/out linears outside the blocks
        model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                         num_attention_heads=4, word_embed_proj_dim=16, max_position_embeddings=64,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        raise ValueError(arch)
    return model.float().eval()


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every adapter test on one torch thread (see tests/conftest.py)."""
    yield


@pytest.fixture
def make_model():
    return build_model


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
