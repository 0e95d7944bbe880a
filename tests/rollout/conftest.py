import pytest


@pytest.fixture
def say(tokenizer):
    """Token ids an engine would return for an assistant turn saying ``text``."""

    def encode(text: str, end: bool = True) -> list[int]:
        return tokenizer.encode(text + ("<|im_end|>" if end else ""), add_special_tokens=False)

    return encode
