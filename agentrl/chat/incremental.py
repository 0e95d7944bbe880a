"""Can a chat template be extended by appending? Detect templates that cannot, and say why.

Token-in-token-out keeps every earlier token as it was: the engine's output is appended as it
came, and new messages are rendered on their own and appended. That equals
``apply_chat_template`` of the whole conversation only when the template is *incremental*:

1. rendering a longer conversation never changes the text of the shorter one
   (prefix stability, checked at every assistant turn and at the end);
2. an assistant turn renders as ``generation prompt + content + end-of-turn`` exactly, so what
   the engine wrote after the generation prompt is what a re-render shows;
3. new messages render the same after any conversation (the fixed-prefix trick of
   :meth:`ChatTemplate.render_continuation` gives what a full render gives).

Templates known to break (1): Qwen3's and the reasoning models' templates drop
``<think>...</think>`` from assistant turns before the last user message; Mistral's templates
place the tool declarations and the system message next to the *last* user message; others a
date. Breaking (2): templates that strip reasoning from every assistant turn, or that add text the
model never writes.

:func:`check_incremental` renders probe conversations, always with the tool declarations when
the template reads them, and raises :class:`TemplateNotIncrementalError` naming the message that
changed the text, with a short diff. The first probe that the template renders is checked:
:data:`PROBE_CONVERSATION` (system, user, assistant with reasoning and a hermes tool call, tool
result, assistant answer, user, assistant), else :data:`SYSTEM_PROBE_CONVERSATION` (system and
alternating user/assistant turns, for templates such as Mistral's that refuse a tool message
without a call id), else :data:`PLAIN_PROBE_CONVERSATION` (no system message). A template that
renders none of them cannot be checked and is refused too (``kind="unverified"``).

Example::

    >>> from agentrl.models import load_tokenizer
    >>> check_incremental(ChatTemplate(load_tokenizer("smollm2-135m-instruct")))
"""

from __future__ import annotations

import logging
from typing import Any

from agentrl.chat.template import ChatTemplate, ChatTemplateError, Message, TemplateRenderError, short_diff

log = logging.getLogger(__name__)

PROBE_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]

_TOOL_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'

PROBE_CONVERSATION: list[Message] = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "<think>\nI should use the calculator.\n</think>\n\n" + _TOOL_CALL},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "<think>\nThe tool says 5.\n</think>\n\nThe answer is 5."},
    {"role": "user", "content": "And 2+4?"},
    {"role": "assistant", "content": "<think>\nOne more than before.\n</think>\n\n6."},
]
"""The default probe: multi-turn, with reasoning, a tool call and a second user query."""

PLAIN_PROBE_CONVERSATION: list[Message] = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nThe answer is 5."},
    {"role": "user", "content": "And 2+4?"},
    {"role": "assistant", "content": "<think>\nOne more than before.\n</think>\n\n6."},
]
"""The last probe: user/assistant turns only, for templates that reject system messages too."""

SYSTEM_PROBE_CONVERSATION: list[Message] = [PROBE_CONVERSATION[0], *PLAIN_PROBE_CONVERSATION]
"""Used when a template rejects the default probe (a tool message, two assistant turns in a row)."""

PROBES: tuple[tuple[str, list[Message]], ...] = (
    ("the default probe (system, user, assistant tool call, tool, assistant, user, assistant)", PROBE_CONVERSATION),
    ("the system probe (system, user, assistant, user, assistant)", SYSTEM_PROBE_CONVERSATION),
    ("the plain probe (user, assistant, user, assistant)", PLAIN_PROBE_CONVERSATION),
)
"""The probes :func:`check_incremental` tries in turn; the first that renders is checked."""

_WHAT_TO_DO = (
    "What to do: use a template that keeps earlier turns verbatim (ChatTemplate(tokenizer, "
    "chat_template='fixed.jinja'); agentrl eval --chat-template fixed.jinja; for training, save it as "
    "chat_template.jinja in the model folder), or accept the difference with "
    "ChatTemplate(tokenizer, allow_non_incremental=True) (or TokenConversation(..., "
    "allow_non_incremental=True)): tokens stay exactly what the engine saw; only a full re-render of the "
    "messages may differ from them."
)

_ADVICE = (
    "Token-in-token-out keeps earlier tokens exactly as generated, so an episode's tokens would differ "
    "from apply_chat_template of its messages, and later turns would see a context the template never "
    "produces.\nTypical causes: the template drops reasoning (<think>...</think>) from earlier assistant "
    "turns (Qwen3, QwQ, DeepSeek-R1 style), or moves tool declarations, the system message or a date next "
    "to the last user message (Mistral style).\n" + _WHAT_TO_DO
)


class TemplateNotIncrementalError(ChatTemplateError):
    """A chat template whose rendering of a conversation is not its earlier rendering plus more.

    Attributes:
        kind: ``prefix_changed`` (adding messages changed earlier text), ``assistant_not_verbatim``
            (an assistant turn does not render as generation prompt + content + end-of-turn),
            ``continuation_mismatch`` (new messages render differently after different histories)
            or ``unverified`` (the template renders none of the probe conversations).
        message_index: index, in the probe conversation, of the message that exposed it (-1 for
            ``unverified``).
        role: that message's role (``""`` for ``unverified``).
    """

    def __init__(self, text: str, *, kind: str, message_index: int, role: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.message_index = message_index
        self.role = role


def check_incremental(
    template: ChatTemplate,
    messages_example: list[Message] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    """Raise :class:`TemplateNotIncrementalError` unless ``template`` can be extended by appending.

    ``messages_example`` is the conversation to probe with (it must hold at least one assistant
    message, after at least one other message), rendered with ``tools``. By default the first of
    :data:`PROBES` that the template renders, with :data:`PROBE_TOOLS` when the template reads
    tools (so tool declarations that move are seen, whichever probe runs); a template that
    renders none is refused (``kind="unverified"``). The default check's result is cached on the
    template object, so it runs once per template.
    """
    if messages_example is not None:
        _check(template, list(messages_example), tools)
        return
    cached = template._incremental
    if cached is True:
        return
    if isinstance(cached, Exception):
        raise cached
    try:
        _check_default(template)
    except TemplateNotIncrementalError as exc:
        template._incremental = exc
        raise
    template._incremental = True


def _check_default(template: ChatTemplate) -> None:
    tools = PROBE_TOOLS if template.supports_tools else None
    failures = []
    for name, probe in PROBES:
        try:
            _check(template, probe, tools)
            return
        except TemplateRenderError as exc:  # the template refuses these roles: try the next probe
            log.debug("%s does not render: %s", name, exc)
            failures.append(f"  {name}: {str(exc).splitlines()[0][:300]}")
    raise TemplateNotIncrementalError(
        "chat template could not be checked: it renders none of the probe conversations"
        + (" (with tool declarations)" if tools else "") + ", so nothing shows that appending turns keeps "
        "the tokens equal to apply_chat_template of the messages.\n" + "\n".join(failures) + "\n" + _WHAT_TO_DO,
        kind="unverified", message_index=-1, role="")


def _check(template: ChatTemplate, m: list[Message], tools: list[dict[str, Any]] | None) -> None:
    stops = [k for k, msg in enumerate(m) if msg.get("role") == "assistant" and k > 0]
    if not stops:
        raise ChatTemplateError(
            "the example conversation needs an assistant message after at least one other message; got "
            f"roles {[msg.get('role') for msg in m]}"
        )
    if m[-1].get("role") != "assistant":
        stops.append(len(m))  # also check the final observation + generation prompt
    eot = template.end_of_turn_text
    prev_end: int | None = None  # index just past the previous assistant message
    prev_text = ""
    for k in stops:
        prompt = template.render(m[:k], tools, add_generation_prompt=True)
        if prev_end is not None:
            if not prompt.startswith(prev_text):
                j = _first_breaking_message(template, m, tools, prev_end, k, prev_text)
                raise _error("prefix_changed", m, j, (
                    f"chat template is not incremental: adding message {j} (role {m[j].get('role')!r}) of "
                    f"the probe conversation changed the text already rendered for messages[:{prev_end}]."
                ), prev_text, template.render(m[: j + 1], tools, add_generation_prompt=j + 1 == k))
            real = prompt[len(prev_text):]
            try:
                ours = template.render_continuation(m[prev_end:k], tools, add_generation_prompt=True)
            except TemplateRenderError:
                raise
            except ChatTemplateError as exc:  # an assistant turn closes differently when messages follow it
                raise TemplateNotIncrementalError(f"{exc}\n{_ADVICE}", kind="continuation_mismatch",
                                                  message_index=prev_end, role=str(m[prev_end].get("role"))) from exc
            if real != ours:
                raise _error("continuation_mismatch", m, prev_end, (
                    f"chat template is not incremental: messages[{prev_end}:{k}] render differently after "
                    f"this conversation than after another one, so they cannot be rendered on their own."
                ), ours, real)
        if k == len(m):
            break
        content = m[k].get("content")
        full = _cut_tail(template, template.render(m[: k + 1], tools))
        if not full.startswith(prompt):
            raise _error("prefix_changed", m, k, (
                f"chat template is not incremental: assistant message {k} does not start where the "
                f"generation prompt ends (the prompt the engine saw is not a prefix of the rendered turn)."
            ), prompt, full)
        if isinstance(content, str) and full != prompt + content + eot:
            raise _error("assistant_not_verbatim", m, k, (
                f"chat template is not incremental: assistant message {k} does not render as generation "
                f"prompt + its content + {eot!r}; the template rewrites what the model wrote."
            ), prompt + content + eot, full)
        prev_end, prev_text = k + 1, full


def _first_breaking_message(
    template: ChatTemplate, m: list[Message], tools: Any, start: int, stop: int, prefix: str
) -> int:
    for j in range(start, stop):
        text = template.render(m[: j + 1], tools, add_generation_prompt=j + 1 == stop)
        if not text.startswith(prefix):
            return j
    return stop - 1


def _cut_tail(template: ChatTemplate, text: str) -> str:
    """Drop the text the template writes after an assistant turn's end-of-turn token."""
    tail = template.assistant_turn_tail
    if tail and text.endswith(template.end_of_turn_text + tail):
        return text[: len(text) - len(tail)]
    return text


def _error(
    kind: str, m: list[Message], j: int, headline: str, before: str, after: str
) -> TemplateNotIncrementalError:
    role = str(m[j].get("role")) if j < len(m) else "generation prompt"
    text = f"{headline}\n{short_diff(before, after)}\n{_ADVICE}"
    return TemplateNotIncrementalError(text, kind=kind, message_index=j, role=role)
