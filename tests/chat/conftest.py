"""Tokenizers and templates for the chat tests: SmolLM2's real tokenizer, plus copies with the
Llama-3 and Qwen special tokens added (so those template tokens are single ids)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from agentrl.chat import ChatTemplate

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search an encyclopedia.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look for."}},
            "required": ["query"],
        },
    },
}


@pytest.fixture(scope="session")
def smol_tok():
    from agentrl.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


# Llama-3's pre-tokenizer split (tokenizer.json of Llama-3): unlike GPT-2's, it keeps a run of
# newlines together ("\s*[\r\n]+"), so the "\n\n" ending Llama-3's generation prompt is one token
# both at the end of a prompt and before the assistant's text.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def with_llama3_specials(smol_tok):
    """SmolLM2's tokenizer with Llama-3's special tokens, BOS and EOS (GPT-2 pre-tokenizer kept)."""
    tok = copy.deepcopy(smol_tok)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL})
    tok.bos_token = "<|begin_of_text|>"
    tok.eos_token = "<|end_of_text|>"
    return tok


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
