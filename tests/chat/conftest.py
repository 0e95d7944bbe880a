"""Tokenizers and templates for the chat tests: SmolLM2's real tokenizer, plus copies with the
Llama-3 and Qwen special tokens added (so those template tokens are single ids)."""

from __future__ import annotations

import copy


import pytest

from agentrl.chat import ChatTemplate
from chat_support import LLAMA3_SPLIT, MISTRAL_SPECIAL, QWEN_ADDED, TEMPLATES, with_llama3_specials  # noqa: F401

@pytest.fixture(scope="session")
def smol_tok():
    from agentrl.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def llama_tok(smol_tok):
    """SmolLM2's vocabulary with Llama-3's special tokens and pre-tokenizer split."""
    from tokenizers import Regex, pre_tokenizers

    tok = with_llama3_specials(smol_tok)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    return tok


@pytest.fixture(scope="session")
def qwen_tok(smol_tok):
    # Qwen's <|im_start|>/<|im_end|> are already SmolLM2 specials; the tool and think tags are
    # added tokens in Qwen's vocabulary.
    tok = copy.deepcopy(smol_tok)
    tok.add_special_tokens({"additional_special_tokens": QWEN_ADDED})
    return tok


@pytest.fixture(scope="session")
def mistral_tok(smol_tok):
    """SmolLM2's vocabulary with Mistral's control tokens, BOS and EOS."""
    tok = copy.deepcopy(smol_tok)
    tok.add_special_tokens({"additional_special_tokens": MISTRAL_SPECIAL})
    tok.bos_token, tok.eos_token = "<s>", "</s>"
    return tok


@pytest.fixture()
def mistral(mistral_tok):
    return ChatTemplate(mistral_tok, TEMPLATES / "mistral_tools.jinja")


@pytest.fixture()
def smol(smol_tok):
    return ChatTemplate(smol_tok)


@pytest.fixture()
def qwen25(qwen_tok):
    return ChatTemplate(qwen_tok, TEMPLATES / "qwen2_5.jinja")


@pytest.fixture()
def llama3(llama_tok):
    return ChatTemplate(llama_tok, TEMPLATES / "llama3.jinja")


@pytest.fixture()
def qwen3(qwen_tok):
    return ChatTemplate(qwen_tok, TEMPLATES / "qwen3.jinja")
