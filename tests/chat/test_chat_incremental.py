"""check_incremental: prefix-stable templates pass; templates that rewrite earlier turns are named."""

from __future__ import annotations

import pytest

from agentrl.chat import ChatTemplate, TemplateNotIncrementalError, check_incremental
from chat_support import SEARCH_TOOL, TEMPLATES

# Mistral-style: tool declarations are written just before the LAST user message.
TOOLS_BEFORE_LAST_USER = """
{%- set ns = namespace(last=-1) %}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}
{%- for m in messages %}
{%- if loop.index0 == ns.last and tools %}<|im_start|>system
TOOLS: {{ tools | map(attribute='function.name') | join(',') }}<|im_end|>
{% endif %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# DeepSeek-R1 style: reasoning removed from every assistant turn, the last one included.
STRIP_ALL_THINKING = """
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.role == 'assistant' and '</think>' in m.content %}{{ m.content.split('</think>')[-1].lstrip() }}
{%- else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# Numbers each message: prefix-stable, but a message renders differently after a different
# history, so it cannot be rendered on its own.
NUMBERED = """
{%- for m in messages %}<|im_start|>{{ m.role }} #{{ loop.index }}
{{ m.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant #{{ messages | length + 1 }}
{% endif %}"""


@pytest.mark.parametrize("name", ["smol", "qwen25", "llama3"])
def test_prefix_stable_templates_pass(name, request):
    tmpl = request.getfixturevalue(name)
    check_incremental(tmpl)
    assert tmpl._incremental is True


def test_result_is_cached_on_the_template(smol, monkeypatch):
    check_incremental(smol)

    def boom(*a, **k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(smol, "render", boom)
    check_incremental(smol)  # cached: no rendering


def test_qwen3_thinking_template_is_detected(qwen3):
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(qwen3)
    err = info.value
    assert err.kind == "prefix_changed"
    assert (err.message_index, err.role) == (5, "user")  # the second user query strips earlier <think>
    text = str(err)
    assert "adding message 5 (role 'user')" in text
    assert "-<think>" in text and "-I should use the calculator." in text  # the diff shows what vanished
    assert "allow_non_incremental=True" in text
    with pytest.raises(TemplateNotIncrementalError) as again:  # cached, same error
        check_incremental(qwen3)
    assert again.value is err


def test_qwen3_single_query_tool_loop_is_incremental(qwen3):
    """Within one user query Qwen3 keeps reasoning, so a custom example of that shape passes."""
    example = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "<think>\nLook it up.\n</think>\n\n<tool_call>\n{}\n</tool_call>"},
        {"role": "tool", "content": "Paris"},
        {"role": "assistant", "content": "<think>\nFound it.\n</think>\n\nParis."},
    ]
    check_incremental(qwen3, example, tools=[SEARCH_TOOL])
    assert qwen3._incremental is None  # custom examples are not cached


def test_qwen3_without_thinking_is_detected_at_the_generation_prompt(qwen_tok):
    from chat_support import TEMPLATES

    tmpl = ChatTemplate(qwen_tok, TEMPLATES / "qwen3.jinja", template_kwargs={"enable_thinking": False})
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(tmpl)
    assert info.value.kind == "prefix_changed"
    assert info.value.role == "assistant"
    assert "does not start where the generation prompt ends" in str(info.value)


def test_tools_before_last_user_message_is_detected(smol_tok):
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(ChatTemplate(smol_tok, TOOLS_BEFORE_LAST_USER))
    assert info.value.kind == "prefix_changed"
    assert (info.value.message_index, info.value.role) == (5, "user")
    assert "TOOLS: calculator" in str(info.value)


def test_template_rewriting_the_last_assistant_turn_is_detected(smol_tok):
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(ChatTemplate(smol_tok, STRIP_ALL_THINKING))
    assert info.value.kind == "assistant_not_verbatim"
    assert info.value.role == "assistant"


def test_history_dependent_rendering_is_detected(smol_tok):
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(ChatTemplate(smol_tok, NUMBERED))
    assert info.value.kind == "continuation_mismatch"


def test_example_without_assistant_turn_is_rejected(smol):
    from agentrl.chat import ChatTemplateError

    with pytest.raises(ChatTemplateError, match="needs an assistant message"):
        check_incremental(smol, [{"role": "user", "content": "hi"}])


def test_mistral_tool_list_before_the_last_user_message_is_detected(mistral):
    """Mistral's template refuses the default probe (a tool result without a call id, two assistant
    turns in a row); the next probe is rendered with the tools too, so the tool list is seen moving
    to the last user message (the system message moves with it)."""
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(mistral)
    err = info.value
    assert err.kind == "prefix_changed"
    assert (err.message_index, err.role) == (3, "user")  # the system probe's second user message
    text = str(err)
    assert "-<s>[AVAILABLE_TOOLS][" in text and "+The answer is 5.</s>[AVAILABLE_TOOLS][" in text  # the list moved
    assert "allow_non_incremental=True" in text


def test_without_tools_the_mistral_template_looks_incremental(mistral):
    """What the check missed when its fallback probe dropped the tools: without them (and without a
    system message) nothing moves."""
    from agentrl.chat import PLAIN_PROBE_CONVERSATION

    check_incremental(mistral, PLAIN_PROBE_CONVERSATION)


def test_a_system_message_next_to_the_last_user_message_is_detected(mistral_tok):
    from chat_support import TEMPLATES

    source = (TEMPLATES / "mistral_tools.jinja").read_text().replace("tools and message", "false and message")
    with pytest.raises(TemplateNotIncrementalError) as info:  # no tool list at all: the system message moves
        check_incremental(ChatTemplate(mistral_tok, source))
    assert info.value.role == "user" and "You are a careful assistant." in str(info.value)


ONE_QUESTION_ONLY = """
{%- if messages | length > 2 %}{{ raise_exception('one question per conversation') }}{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_a_template_that_renders_no_probe_is_refused_and_says_what_to_do(smol_tok):
    from agentrl.chat import TokenConversation

    tmpl = ChatTemplate(smol_tok, ONE_QUESTION_ONLY)
    with pytest.raises(TemplateNotIncrementalError) as info:
        check_incremental(tmpl)
    err, text = info.value, str(info.value)
    assert (err.kind, err.message_index, err.role) == ("unverified", -1, "")
    assert text.count("one question per conversation") == 3  # each probe's failure, named
    assert "chat_template='fixed.jinja'" in text and "ChatTemplate(tokenizer, allow_non_incremental=True)" in text
    with pytest.raises(TemplateNotIncrementalError, match="could not be checked"):
        TokenConversation(tmpl, [{"role": "user", "content": "hi"}])
    trusted = ChatTemplate(smol_tok, ONE_QUESTION_ONLY, allow_non_incremental=True)
    assert TokenConversation(trusted, [{"role": "user", "content": "hi"}]).prompt_ids


def test_training_refuses_a_template_that_cannot_keep_tokens_exact_before_the_first_rollout(
        mistral_tok, tmp_path, capsys, monkeypatch):
    """Without the start-up check every episode of such a run would come back failed and the run would train
    on nothing."""
    import copy
    from pathlib import Path

    from agentrl.testing.tiny import make_tiny_model
    from agentrl.train_cli import main

    tok = copy.deepcopy(mistral_tok)
    tok.chat_template = (TEMPLATES / "mistral_tools.jinja").read_text()
    model = make_tiny_model(tmp_path / "model", tokenizer=tok)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    code = main(["--config", "recipes/quickstart/config.yaml", "--model-path", str(model), "--num-rollout", "1",
                 "--eval-interval", "0", "--output-dir", str(tmp_path / "run"), "--save", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and f"the chat template of --model-path {model}" in err and "allow_non_incremental" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
