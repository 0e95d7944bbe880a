"""Token capture: the chat calls of one episode kept as token ids, segment by segment.

An agent program sends its whole conversation on every call. :class:`EpisodeCapture` turns those
calls back into the token-in-token-out record a :class:`~agentrl.env.TextEnv` episode produces:

* the first call's messages are rendered once, with the generation prompt (a new *segment*);
* the engine's output is appended as it came (``loss_mask`` 1, logprobs kept), and the assistant
  message returned to the program is remembered;
* a later call whose messages *extend* a segment's conversation (the same earlier messages, the
  assistant messages exactly as they were returned, the same tools) appends only the new messages,
  rendered alone with the fixed-prefix trick (``loss_mask`` 0): the segment grows exactly as
  :class:`~agentrl.chat.TokenConversation` grows, because it is one;
* any other call (the program dropped, edited or summarised messages, changed the system prompt or
  the tools, or re-sent a conversation that already has an answer) starts a new segment, rendered
  whole. Assistant messages that this capture produced are rendered with the text the model
  generated (tool calls in the model's own format), the others as the template renders them.

Each segment becomes one sample; the segments of an episode share its reward. Messages are
compared by role, text (surrounding whitespace ignored), tool-call names and arguments (as JSON
values), tool-call ids and names of tool messages; tool-call ids of assistant messages are not
compared (frameworks may rewrite them).

Example::

    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> cap = EpisodeCapture(ChatTemplate(tok))
    >>> first = [{"role": "user", "content": "2+3?"}]
    >>> seg, prompt = cap.begin_call(first, None)
    >>> out = tok.encode("5<|im_end|>", add_special_tokens=False)
    >>> reply = cap.end_call(seg, out, [-0.5, -0.01], "stop", {"role": "assistant", "content": "5"})
    >>> seg2, prompt2 = cap.begin_call(first + [reply, {"role": "user", "content": "Sure?"}], None)
    >>> seg2 is seg, prompt2[:len(prompt) + 2] == prompt + out, len(cap.segments)
    (True, True, 1)
    >>> _ = cap.begin_call([{"role": "user", "content": "Start over."}], None)
    >>> len(cap.segments)
    2
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentrl.chat import ChatTemplate, TokenConversation
from agentrl.utils import safe_json

Message = dict[str, Any]


@dataclass
class CallRecord:
    """One chat call of an episode, as the engine saw it."""

    segment: int
    """Index of the segment it extended or opened."""
    prompt_length: int
    """Tokens of the segment before the completion: the engine's whole input."""
    new_prompt_ids: list[int]
    """The prompt tokens this call added (the whole prompt when it opened the segment)."""
    new_messages: int = 0
    """Messages this call added to its segment (all of them when it opened the segment)."""
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    weight_version: int = 0


class Segment:
    """One token sequence: a :class:`TokenConversation` and the messages the program sees for it."""

    def __init__(self, index: int, conv: TokenConversation, view: list[str], tools_key: str) -> None:
        self.index = index
        self.conv = conv
        self.view = view
        """Canonical forms of the messages a call must start with to extend this segment."""
        self.tools_key = tools_key
        self.calls = 0

    def extended_by(self, canon: list[str], tools_key: str) -> bool:
        """Whether a call with these messages continues this segment (and it awaits no completion)."""
        n = len(self.view)
        return (not self.conv.awaiting_completion and tools_key == self.tools_key and len(canon) > n
                and canon[:n] == self.view)

    def to_sample_fields(self) -> dict[str, Any]:
        """``prompt_ids``, ``response_ids``, ``loss_mask``, ``rollout_logprobs`` of this segment."""
        return self.conv.to_sample_fields()


class EpisodeCapture:
    """The calls of one episode, grouped into segments of tokens (see the module doc)."""

    def __init__(self, template: ChatTemplate, *, seed: int | None = None) -> None:
        self.template = template
        self.seed = seed
        """Sampling seed of the episode (call ``i`` samples with ``seed + 7919 * i``, as the episode loop does)."""
        self.segments: list[Segment] = []
        self.calls: list[CallRecord] = []
        self.finished = False
        self.max_calls: int | None = None
        """Most calls the episode may make (beyond: refused, and the episode is truncated)."""
        self.truncated = False
        """A call was refused for the turn limit or the context budget."""
        self.tool_calls = 0
        """Tool calls returned to the program."""
        self._generated: dict[str, str] = {}
        """Canonical form of an assistant message returned by this capture -> the text the model generated."""

    @property
    def num_turns(self) -> int:
        return sum(s.conv.num_turns for s in self.segments)

    def begin_call(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> tuple[Segment, list[int]]:
        """The segment this call belongs to and the engine's input ids for it (new tokens appended)."""
        canon = [canonical(m) for m in messages]
        tools_key = json.dumps(tools or [], sort_keys=True)
        for seg in reversed(self.segments):
            if seg.extended_by(canon, tools_key):
                new = messages[len(seg.view):]
                added = seg.conv.add_observation([self._renderable(m) for m in new])
                seg.view += canon[len(seg.view):]
                num_new = len(new)
                break
        else:
            conv = TokenConversation(self.template, [self._renderable(m) for m in messages], tools=tools)
            seg = Segment(len(self.segments), conv, canon, tools_key)
            self.segments.append(seg)
            added, num_new = conv.tokens, len(messages)
        seg.calls += 1
        tokens = seg.conv.tokens
        self.calls.append(CallRecord(seg.index, len(tokens), list(added), num_new))
        return seg, tokens

    def end_call(self, segment: Segment, token_ids: list[int], logprobs: list[float] | None, finish_reason: str,
                 message: Message, *, text: str | None = None, weight_version: int = 0) -> Message:
        """Append the engine's output to ``segment`` and remember ``message`` (what the program gets back,
        returned). ``text``: the generated text (default: decoded from ``token_ids``)."""
        segment.conv.add_completion(token_ids, logprobs, text)
        generated = segment.conv.messages[-1]["content"]
        key = canonical(message)
        segment.view.append(key)
        self._generated[key] = generated
        record = next(c for c in reversed(self.calls) if c.segment == segment.index and c.finish_reason is None)
        record.completion_ids, record.finish_reason = list(token_ids), finish_reason
        record.logprobs = [0.0] * len(token_ids) if logprobs is None else list(logprobs)
        record.weight_version = weight_version
        return message

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> list[int]:
        """Token ids of ``messages`` rendered whole, with the generation prompt (nothing recorded)."""
        return self.template.encode([self._renderable(m) for m in messages], tools, add_generation_prompt=True)

    def _renderable(self, m: Message) -> Message:
        """A message as the chat template gets it: string content, ``developer`` as ``system``, an
        assistant message this capture produced as the text the model generated, tool-call arguments
        as JSON values (templates write them with ``tojson``)."""
        role = "system" if m["role"] == "developer" else m["role"]
        if role == "assistant":
            generated = self._generated.get(canonical(m))
            if generated is not None:
                return {"role": "assistant", "content": generated}
        out: Message = {"role": role, "content": m.get("content") or ""}
        if m.get("tool_calls"):
            out["tool_calls"] = [{"id": c.get("id", ""), "type": "function",
                                  "function": {"name": c["function"]["name"],
                                               "arguments": _json_value(c["function"]["arguments"])}}
                                 for c in m["tool_calls"]]
        for key in ("tool_call_id", "name"):
            if key in m:
                out[key] = m[key]
        return out


def canonical(m: Message) -> str:
    """The form two messages are compared in (see the module doc)."""
    content = m.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    key: dict[str, Any] = {"role": m.get("role"), "content": (content or "").strip()}
    if m.get("tool_calls"):
        key["tool_calls"] = [[c["function"]["name"], _json_value(c["function"]["arguments"])] for c in m["tool_calls"]]
    for name in ("tool_call_id", "name"):
        if name in m and m["role"] != "assistant":
            key[name] = m[name]
    return json.dumps(key, sort_keys=True, ensure_ascii=False)


def _json_value(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments
    try:
        return safe_json.loads(arguments)
    except ValueError:
        return arguments
