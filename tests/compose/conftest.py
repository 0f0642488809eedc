"""Session-wide tiny bases for the compose tests (helpers live in compose_helpers.py)."""

import pytest
from compose_helpers import Base, build_gpt2, build_llama


@pytest.fixture(scope="session")
def llama() -> Base:
    return build_llama()


@pytest.fixture(scope="session")
def gpt2() -> Base:
    return build_gpt2()
