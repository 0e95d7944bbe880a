import pytest

from agentrl.chat import ChatTemplate
from agentrl.models import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny-qwen2")


@pytest.fixture(scope="session")
def template(tokenizer):
    return ChatTemplate(tokenizer)


@pytest.fixture
def say(tokenizer):
    """Token ids an engine would return for an assistant turn saying ``text``."""

    def encode(text: str, end: bool = True) -> list[int]:
        return tokenizer.encode(text + ("<|im_end|>" if end else ""), add_special_tokens=False)

    return encode
