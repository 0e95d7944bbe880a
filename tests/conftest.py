"""Fixtures shared by the test folders: SmolLM2's tokenizer (through the tiny-qwen2 alias) and its chat template."""

import pytest

from agentrl.chat import ChatTemplate
from agentrl.models import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny-qwen2")


@pytest.fixture(scope="session")
def template(tokenizer):
    return ChatTemplate(tokenizer)
