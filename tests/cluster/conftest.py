import pytest

from agentrl.chat import ChatTemplate
from agentrl.models import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny-qwen2")


@pytest.fixture(scope="session")
def template(tokenizer):
    return ChatTemplate(tokenizer)


