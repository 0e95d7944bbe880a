"""Constants and helpers shared by the chat tests (fixtures live in conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
MISTRAL_SPECIAL = ["<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]

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
