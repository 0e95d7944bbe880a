"""ChatTemplate: sources, rendering/encoding, and the turn format learnt by rendering."""

from __future__ import annotations

import copy
import logging

import pytest

from agentrl.chat import ChatTemplate, ChatTemplateError
from chat_support import SEARCH_TOOL, TEMPLATES

USER = [{"role": "user", "content": "What is the capital of France?"}]


def _raw_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def test_smollm2_turn_format_found_by_rendering(smol, smol_tok):
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    assert smol.end_of_turn_ids == [im_end]
    assert smol.end_of_turn_text == "<|im_end|>"
    assert smol.assistant_turn_tail == "\n"
    assert smol.generation_prompt == "<|im_start|>assistant\n"
    assert smol.stop_token_ids[0] == im_end and smol_tok.eos_token_id in smol.stop_token_ids
    assert len(set(smol.stop_token_ids)) == len(smol.stop_token_ids)
    assert smol.supports_tools is False


def test_llama3_turn_format_and_stop_ids(llama3, llama_tok):
    eot = llama_tok.convert_tokens_to_ids("<|eot_id|>")
    end_of_text = llama_tok.convert_tokens_to_ids("<|end_of_text|>")
    assert llama3.end_of_turn_ids == [eot]
    assert llama3.assistant_turn_tail == ""
    assert llama3.generation_prompt == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert llama3.stop_token_ids == [eot, end_of_text]
    assert llama3.supports_tools is True
    ids = llama3.encode(USER, add_generation_prompt=True)
    assert ids[0] == llama_tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert ids.count(ids[0]) == 1, "BOS written once, by the template"


def test_qwen25_tools_declared_in_system_message(qwen25):
    assert qwen25.supports_tools
    text = qwen25.render(USER, tools=[SEARCH_TOOL], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert '<tools>\n{"type": "function", "function": {"name": "search"' in text
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert "<tools>" not in qwen25.render(USER)


@pytest.mark.parametrize("name", ["smol", "qwen25", "llama3"])
def test_encode_matches_apply_chat_template(name, request):
    tmpl = request.getfixturevalue(name)
    msgs = [{"role": "system", "content": "Be brief."}, *USER]
    expected = _raw_ids(tmpl.tokenizer, msgs, tools=[SEARCH_TOOL], add_generation_prompt=True,
                        chat_template=tmpl.source)
    assert tmpl.encode(msgs, tools=[SEARCH_TOOL], add_generation_prompt=True) == expected
    assert tmpl.tokenize(tmpl.render(msgs, tools=[SEARCH_TOOL], add_generation_prompt=True)) == expected


class _ShapeTokenizer:
    """Wraps a tokenizer so apply_chat_template(tokenize=True) returns a given shape."""

    def __init__(self, tok, shape):
        self._tok, self._shape = tok, shape

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def apply_chat_template(self, messages, **kw):
        if not kw.get("tokenize", True):
            return self._tok.apply_chat_template(messages, **kw)
        kw.pop("tokenize")
        ids = _raw_ids(self._tok, messages, **kw)
        return {"list": ids, "dict": {"input_ids": ids, "attention_mask": [1] * len(ids)},
                "batch": [ids]}[self._shape]


@pytest.mark.parametrize("shape", ["list", "dict", "batch"])
def test_encode_accepts_every_return_shape(smol_tok, shape):
    expected = _raw_ids(smol_tok, USER, add_generation_prompt=True)
    tmpl = ChatTemplate(_ShapeTokenizer(smol_tok, shape))
    assert tmpl.encode(USER, add_generation_prompt=True) == expected


def test_template_from_string_path_and_file(qwen_tok):
    path = TEMPLATES / "qwen2_5.jinja"
    source = path.read_text()
    for arg in (path, str(path), source):
        assert ChatTemplate(qwen_tok, arg).source == source
    assert ChatTemplate(qwen_tok).source == qwen_tok.chat_template


def test_template_source_errors(smol_tok):
    with pytest.raises(ChatTemplateError, match="neither a template nor an existing file"):
        ChatTemplate(smol_tok, "no/such/template.jinja")
    bare = copy.deepcopy(smol_tok)
    bare.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        ChatTemplate(bare)


def test_render_continuation_chatml(smol):
    text = smol.render_continuation([{"role": "user", "content": "And Spain?"}])
    assert text == "\n<|im_start|>user\nAnd Spain?<|im_end|>\n<|im_start|>assistant\n"
    assert smol.render_continuation([{"role": "user", "content": "x"}], add_generation_prompt=False) == (
        "\n<|im_start|>user\nx<|im_end|>\n"
    )


def test_render_continuation_merges_consecutive_qwen_tool_results(qwen25):
    text = qwen25.render_continuation(
        [{"role": "tool", "content": "A"}, {"role": "tool", "content": "B"}], tools=[SEARCH_TOOL]
    )
    assert text == ("\n<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n"
                    "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_render_continuation_llama_tool_result(llama3):
    text = llama3.render_continuation([{"role": "tool", "content": "Paris"}])
    assert text == ("<|start_header_id|>ipython<|end_header_id|>\n\nParis<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tools_given_to_a_template_without_tools_warns_once(smol, caplog):
    with caplog.at_level(logging.WARNING, logger="agentrl.chat.template"):
        smol.render(USER, tools=[SEARCH_TOOL])
        smol.render(USER, tools=[SEARCH_TOOL])
    warnings = [r for r in caplog.records if "never reads 'tools'" in r.message]
    assert len(warnings) == 1


def test_template_without_special_end_of_turn_is_an_error(smol_tok):
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }} END\n{% endfor %}" \
            "{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(ChatTemplateError, match="could not find an end-of-turn token"):
        _ = ChatTemplate(smol_tok, plain).end_of_turn_ids


def test_template_errors_name_the_roles(smol_tok):
    strict = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools here') }}" \
             "{% endif %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"roles \['user', 'tool'\].*no tools here"):
        ChatTemplate(smol_tok, strict).render([*USER, {"role": "tool", "content": "x"}])


def test_template_kwargs_reach_the_template(llama_tok):
    default = ChatTemplate(llama_tok, TEMPLATES / "llama3.jinja")
    dated = ChatTemplate(llama_tok, TEMPLATES / "llama3.jinja", template_kwargs={"date_string": "01 Jan 2025"})
    assert "Today Date: 26 Jul 2024" in default.render(USER)
    assert "Today Date: 01 Jan 2025" in dated.render(USER)


def test_no_tools_warning_when_the_prompt_declares_the_tools(smol, caplog):
    declared = [{"role": "system", "content": 'Tools:\n{"name": "search", "description": "Search."}'}, *USER]
    with caplog.at_level(logging.WARNING, logger="agentrl.chat.template"):
        smol.render(declared, tools=[SEARCH_TOOL])
        smol.render(USER, tools=[SEARCH_TOOL])  # later renders (observations) are not checked again
    assert not [r for r in caplog.records if "never reads 'tools'" in r.message]
