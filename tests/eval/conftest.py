"""A tiny random Llama and a word-level tokenizer built in memory: no hub, CPU, milliseconds."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.conftest import tiny_llama

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    "the a cat dog sat ran on in mat park sun moon is was red blue big small what where who why "
    "how answer question user assistant says tell me about of and to it this that one two three"
).split()


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()  # joins word tokens with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def build_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """The tiny llama with this tokenizer's special ids."""
    return tiny_llama(vocab_size, seed, tie_word_embeddings=False,
                      initializer_range=0.2,  # well separated logits: greedy argmax is not a near-tie
                      bos_token_id=1, eos_token_id=2, pad_token_id=0).float()


@pytest.fixture
def model(tokenizer) -> LlamaForCausalLM:
    return build_model(len(tokenizer))


@pytest.fixture
def make_model():
    """build_model(vocab_size, seed) for tests that need their own vocabulary size."""
    return build_model
