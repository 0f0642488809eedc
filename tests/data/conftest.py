"""Session tokenizers for the data tests (see data_helpers.py)."""

from __future__ import annotations

import pytest
from data_helpers import CHATML, Tok, make_tokenizer


@pytest.fixture(scope="session")
def plain_tok() -> Tok:
    return make_tokenizer()


@pytest.fixture(scope="session")
def chat_tok() -> Tok:
    return make_tokenizer(CHATML)
