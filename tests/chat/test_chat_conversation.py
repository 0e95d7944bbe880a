"""TokenConversation: engine tokens kept as-is (mask 1), observations rendered alone (mask 0).

Token equality, precisely: for a prefix-stable template and engine output that is the
tokenization of the assistant text plus the end-of-turn token,

* after an observation, ``conv.tokens == apply_chat_template(messages, add_generation_prompt=True)``;
* after a final completion, ``apply_chat_template(messages) == conv.tokens + tokenize(tail)`` where
  ``tail = template.assistant_turn_tail`` is the text the template writes after the end-of-turn
  token (``"\\n"`` for ChatML, nothing for Llama-3): the engine stops at the end-of-turn token.
"""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl.chat import ChatTemplate, TemplateNotIncrementalError, TokenConversation
from agentrl.engine.base import SamplingParams
from agentrl.testing import FakeEngine
from agentrl.types import Sample
from chat_support import SEARCH_TOOL

OPENING = [
    {"role": "system", "content": "You are a helpful assistant with a search tool."},
    {"role": "user", "content": "What is the capital of France?"},
]
TOOL_RESULT = [{"role": "tool", "content": "Paris is the capital and largest city of France."}]
ANSWER = "The capital of France is Paris."
HERMES_CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "capital of France"}}\n</tool_call>'
LLAMA_CALL = '{"name": "search", "parameters": {"query": "capital of France"}}'
STRUCTURED_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "search", "arguments": {"query": "capital of France"}}}]}

# template fixture, end-of-turn text the engine emits, tool-call text, renders tool_calls?
CASES = {
    "smollm2": ("smol", "<|im_end|>", HERMES_CALL, False),
    "qwen2.5": ("qwen25", "<|im_end|>", HERMES_CALL, True),
    "llama3": ("llama3", "<|eot_id|>", LLAMA_CALL, True),
}


def _raw(tok, messages, **kw):
    """apply_chat_template token ids, whatever shape transformers returns."""
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def _logprobs(n, start):
    return [round(-0.01 * (start + i + 1), 4) for i in range(n)]


@pytest.mark.parametrize("case", list(CASES))
def test_tool_conversation_tokens_equal_full_render(case, request):
    name, eot, call, renders_tool_calls = CASES[case]
    tmpl: ChatTemplate = request.getfixturevalue(name)
    tok = tmpl.tokenizer
    kw = dict(tools=[SEARCH_TOOL], chat_template=tmpl.source)

    conv = TokenConversation(tmpl, OPENING, tools=[SEARCH_TOOL])
    assert conv.prompt_ids == _raw(tok, OPENING, add_generation_prompt=True, **kw)
    assert (conv.num_turns, conv.response_ids, conv.loss_mask) == (0, [], [])

    out1 = tok.encode(call + eot, add_special_tokens=False)  # scripted engine output, turn 1
    lp1 = _logprobs(len(out1), 0)
    start1 = len(conv.response_ids)
    conv.add_completion(out1, lp1)
    obs_ids = conv.add_observation(TOOL_RESULT)
    so_far = OPENING + [{"role": "assistant", "content": call}] + TOOL_RESULT
    assert conv.tokens == _raw(tok, so_far, add_generation_prompt=True, **kw)
    assert conv.response_ids[-len(obs_ids):] == obs_ids

    out2 = tok.encode(ANSWER + eot, add_special_tokens=False)  # turn 2
    lp2 = _logprobs(len(out2), 100)
    start2 = len(conv.response_ids)
    conv.add_completion(out2, lp2)

    whole = so_far + [{"role": "assistant", "content": ANSWER}]
    full = _raw(tok, whole, **kw)
    n = len(conv.tokens)
    assert conv.tokens == full[:n]
    assert full[n:] == tmpl.tokenize(tmpl.assistant_turn_tail)
    assert _raw(tok, conv.messages, **kw) == full  # the text view renders to the same tokens
    if renders_tool_calls:  # OpenAI-style structured tool_calls render to the same tokens
        structured = OPENING + [STRUCTURED_CALL] + TOOL_RESULT + [{"role": "assistant", "content": ANSWER}]
        assert _raw(tok, structured, **kw) == full

    # the mask is 1 exactly on the engine's tokens, and their logprobs are kept
    engine_positions = list(range(start1, start1 + len(out1))) + list(range(start2, start2 + len(out2)))
    assert [i for i, m in enumerate(conv.loss_mask) if m == 1] == engine_positions
    assert [conv.response_ids[i] for i in engine_positions] == out1 + out2
    assert [conv.logprobs[i] for i in engine_positions] == lp1 + lp2
    assert all(conv.logprobs[i] == 0.0 for i, m in enumerate(conv.loss_mask) if m == 0)
    assert conv.response_ids[start2 - 1] != out1[-1] or len(obs_ids) == 0  # observation sits between
    assert (conv.num_turns, conv.num_tokens) == (2, n)
    assert conv.messages[2] == {"role": "assistant", "content": call}
    assert conv.messages[-1] == {"role": "assistant", "content": ANSWER}

    sample = Sample(**conv.to_sample_fields(), messages=conv.messages, num_turns=conv.num_turns)
    sample.validate()
    assert sample.num_generated_tokens == len(out1) + len(out2)


def test_chatml_observation_starts_with_the_newline_the_engine_did_not_write(smol):
    tok = smol.tokenizer
    conv = TokenConversation(smol, OPENING)
    conv.add_completion(tok.encode("Paris.<|im_end|>", add_special_tokens=False), None)
    obs = conv.add_observation([{"role": "user", "content": "Thanks"}])
    assert tok.decode(obs) == "\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"


def test_length_cut_completion_is_closed_with_end_of_turn_mask_0(smol):
    tok = smol.tokenizer
    eot = smol.end_of_turn_ids
    conv = TokenConversation(smol, OPENING)
    cut = tok.encode("The capital of", add_special_tokens=False)  # max_new_tokens hit, no <|im_end|>
    conv.add_completion(cut, _logprobs(len(cut), 0))
    assert conv.awaiting_completion  # the turn is still open
    obs = conv.add_observation([{"role": "user", "content": "Go on."}])
    assert obs[: len(eot)] == eot
    assert conv.loss_mask == [1] * len(cut) + [0] * len(obs)
    messages = OPENING + [{"role": "assistant", "content": "The capital of"}, {"role": "user", "content": "Go on."}]
    assert conv.messages == messages
    assert conv.tokens == _raw(tok, messages, add_generation_prompt=True)


def test_a_second_completion_continues_a_cut_turn(smol):
    tok = smol.tokenizer
    conv = TokenConversation(smol, OPENING)
    a = tok.encode("The capital", add_special_tokens=False)
    b = tok.encode(" is Paris.<|im_end|>", add_special_tokens=False)
    conv.add_completion(a, None)
    conv.add_completion(b, None)
    assert conv.num_turns == 1
    assert conv.messages[-1] == {"role": "assistant", "content": "The capital is Paris."}
    assert conv.loss_mask == [1] * (len(a) + len(b))
    with pytest.raises(RuntimeError, match="finished assistant turn"):
        conv.add_completion(b, None)


def test_text_view_uses_given_text_and_strips_stop_tokens(llama3):
    tok = llama3.tokenizer
    conv = TokenConversation(llama3, OPENING)
    conv.add_completion(tok.encode("Paris.<|eot_id|>", add_special_tokens=False), None)
    assert conv.messages[-1]["content"] == "Paris."
    conv.add_observation([{"role": "user", "content": "Sure?"}])
    conv.add_completion(tok.encode("Yes.<|eot_id|>", add_special_tokens=False), None, text="Yes!")
    assert conv.messages[-1]["content"] == "Yes!"


def test_final_observation_without_generation_prompt(smol):
    tok = smol.tokenizer
    conv = TokenConversation(smol, OPENING)
    conv.add_completion(tok.encode("Paris.<|im_end|>", add_special_tokens=False), None)
    conv.add_observation([{"role": "user", "content": "Correct."}], add_generation_prompt=False)
    assert not conv.awaiting_completion
    assert conv.tokens == _raw(tok, conv.messages)
    with pytest.raises(RuntimeError, match="final observation"):
        conv.add_completion([1], None)
    with pytest.raises(RuntimeError, match="final observation"):
        conv.add_observation([{"role": "user", "content": "x"}])


def test_misuse_is_reported(smol):
    with pytest.raises(ValueError, match="at least one opening message"):
        TokenConversation(smol, [])
    conv = TokenConversation(smol, OPENING)
    with pytest.raises(RuntimeError, match="call add_completion first"):
        conv.add_observation(TOOL_RESULT)
    with pytest.raises(ValueError, match="equal lengths; got 2 and 1"):
        conv.add_completion([5, 6], [-0.1])
    conv.add_completion([5, 2], None)
    with pytest.raises(ValueError, match="at least one message"):
        conv.add_observation([])


def test_non_incremental_template_fails_fast(qwen3):
    with pytest.raises(TemplateNotIncrementalError, match="<think>"):
        TokenConversation(qwen3, OPENING)


def test_non_incremental_template_opt_in_keeps_tokens_as_generated(qwen3, caplog):
    tok = qwen3.tokenizer
    conv = TokenConversation(qwen3, OPENING, allow_non_incremental=True)
    first = "<think>\nI know this.\n</think>\n\nParis."
    out = tok.encode(first + "<|im_end|>", add_special_tokens=False)
    conv.add_completion(out, None)
    conv.add_observation([{"role": "user", "content": "And Spain?"}])
    # the tokens keep the first turn's reasoning exactly as generated ...
    assert tok.decode(conv.tokens).count("I know this.") == 1
    # ... while a full re-render of the text view drops it (the documented difference)
    assert "I know this." not in qwen3.render(conv.messages, add_generation_prompt=True)
    assert any("non-incremental" in r.message for r in caplog.records)


def test_qwen3_single_query_tool_loop_matches_full_render(qwen3):
    """Reasoning is kept within one user query, so the tool loop's tokens equal a full render."""
    tok = qwen3.tokenizer
    opening = OPENING[1:]
    conv = TokenConversation(qwen3, opening, tools=[SEARCH_TOOL], allow_non_incremental=True)
    t1 = "<think>\nLet me search.\n</think>\n\n" + HERMES_CALL
    t2 = "<think>\nThe tool says Paris.\n</think>\n\n" + ANSWER
    conv.add_completion(tok.encode(t1 + "<|im_end|>", add_special_tokens=False), None)
    conv.add_observation(TOOL_RESULT)
    conv.add_completion(tok.encode(t2 + "<|im_end|>", add_special_tokens=False), None)
    whole = opening + [{"role": "assistant", "content": t1}] + TOOL_RESULT + [{"role": "assistant", "content": t2}]
    full = _raw(tok, whole, tools=[SEARCH_TOOL], chat_template=qwen3.source)
    assert full == conv.tokens + qwen3.tokenize("\n")


async def test_fake_engine_episode_sees_exactly_the_kept_tokens(qwen25):
    """Every engine input is a prefix of the final sequence, followed by that turn's output."""
    tok = qwen25.tokenizer
    outs = [tok.encode(HERMES_CALL + "<|im_end|>", add_special_tokens=False),
            tok.encode(ANSWER + "<|im_end|>", add_special_tokens=False)]
    engine = FakeEngine(script=outs)
    conv = TokenConversation(qwen25, OPENING, tools=[SEARCH_TOOL])
    sampling = SamplingParams(max_new_tokens=64, stop_token_ids=qwen25.stop_token_ids)
    completions = []
    for turn in range(2):
        c = await engine.generate(conv.tokens, sampling)
        completions.append(c)
        conv.add_completion(c.token_ids, c.logprobs)
        if turn == 0:
            conv.add_observation(TOOL_RESULT)
    final = conv.tokens
    for (input_ids, _), c in zip(engine.requests, completions):
        assert final[: len(input_ids)] == input_ids
        assert final[len(input_ids): len(input_ids) + len(c.token_ids)] == c.token_ids
    assert [lp for lp, m in zip(conv.logprobs, conv.loss_mask) if m] == completions[0].logprobs + completions[1].logprobs


_WORDS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_TEXT = st.lists(_WORDS, min_size=1, max_size=6).map(" ".join)
_STEP = st.tuples(_TEXT, st.booleans(), st.integers(1, 5), st.sampled_from(["user", "tool"]), _TEXT)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=4))
def test_random_episodes_keep_mask_and_text(smol, steps):
    """Random turns (some cut by length): the mask is 1 exactly on engine tokens, and the
    tokens decode to the template's render of the text view."""
    tok = smol.tokenizer
    conv = TokenConversation(smol, OPENING)
    engine_positions: list[int] = []
    for text, cut, keep, role, obs in steps:
        ids = tok.encode(text + "<|im_end|>", add_special_tokens=False)
        if cut:
            ids = ids[: min(keep, len(ids) - 1)]
        engine_positions += range(len(conv.response_ids), len(conv.response_ids) + len(ids))
        conv.add_completion(ids, _logprobs(len(ids), 0))
        conv.add_observation([{"role": role, "content": obs}])
    assert [i for i, m in enumerate(conv.loss_mask) if m] == engine_positions
    assert len(conv.response_ids) == len(conv.loss_mask) == len(conv.logprobs)
    assert tok.decode(conv.tokens) == smol.render(conv.messages, add_generation_prompt=True)


def test_tokenizer_boundary_drift_keeps_the_engine_view(smol_tok):
    """Not covered by token equality: a tokenizer that splits the generation prompt differently
    at the end of a prompt than before text. SmolLM2's GPT-2 split makes Llama-3's "\\n\\n" one
    token at the end of a prompt (what the engine sees) but two before a word in a full render.
    The conversation keeps the engine's tokens; only a re-tokenization of the text differs."""
    from chat_support import TEMPLATES, with_llama3_specials

    tok = with_llama3_specials(smol_tok)
    tmpl = ChatTemplate(tok, TEMPLATES / "llama3.jinja")
    conv = TokenConversation(tmpl, OPENING)
    prompt = list(conv.tokens)
    assert prompt[-1] == tok.encode("\n\n", add_special_tokens=False)[0]  # one token at the end
    out = tok.encode(ANSWER + "<|eot_id|>", add_special_tokens=False)
    conv.add_completion(out, None)
    assert conv.tokens == prompt + out  # the engine's view, untouched
    full = _raw(tok, conv.messages, chat_template=tmpl.source)
    assert full != conv.tokens
    assert tok.decode(full) == tok.decode(conv.tokens)
    assert len(full) == len(conv.tokens) + 1  # "\n\n" -> "\n", "\n" before the answer


def test_mistral_tool_template_is_refused_and_would_repeat_the_tool_list(mistral):
    """Mistral writes the tool list before the LAST user message. A conversation with tools and a
    follow-up user message is refused; forced through (allow_non_incremental), its tokens would hold
    the tool list twice, where apply_chat_template of the same messages holds it once."""
    tok = mistral.tokenizer
    with pytest.raises(TemplateNotIncrementalError, match=r"AVAILABLE_TOOLS"):
        TokenConversation(mistral, OPENING, tools=[SEARCH_TOOL])

    forced = ChatTemplate(tok, mistral.source, allow_non_incremental=True)
    conv = TokenConversation(forced, OPENING, tools=[SEARCH_TOOL])
    kw = dict(tools=[SEARCH_TOOL], chat_template=mistral.source)
    assert conv.prompt_ids == _raw(tok, OPENING, add_generation_prompt=True, **kw)
    conv.add_completion(tok.encode(ANSWER + "</s>", add_special_tokens=False), None)
    conv.add_observation([{"role": "user", "content": "And of Spain?"}])
    conv.add_completion(tok.encode("Madrid.</s>", add_special_tokens=False), None)
    full = _raw(tok, conv.messages, **kw)
    assert conv.tokens != full
    assert tok.decode(conv.tokens).count("[AVAILABLE_TOOLS]") == 2
    assert tok.decode(full).count("[AVAILABLE_TOOLS]") == 1
