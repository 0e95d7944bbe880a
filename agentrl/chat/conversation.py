"""A conversation kept as token ids: the engine's output as it came, observations rendered alone.

:class:`TokenConversation` is the token-in-token-out bookkeeping of one episode:

* the opening messages are rendered once, with the generation prompt: ``prompt_ids``;
* each completion is appended exactly as the engine returned it (``loss_mask`` 1, logprobs
  kept), end-of-turn token included; it is never decoded and re-encoded;
* new messages (tool results, user feedback) are rendered on their own with the fixed-prefix
  trick (:meth:`ChatTemplate.encode_continuation`), ending with the next generation prompt,
  and appended with ``loss_mask`` 0 and logprob 0.0;
* a completion cut by length (no end-of-turn token) is closed with the template's end-of-turn
  token (mask 0) before the next messages, so turns always end as the template ends them.

``messages`` is a text view for logs and reward functions; the tokens are the truth.

For an incremental template (see :func:`check_incremental`) and engine output that tokenizes
back to itself, ``prompt_ids + response_ids`` equals ``apply_chat_template`` of ``messages``,
up to the text the template writes after the last end-of-turn token (``"\\n"`` for ChatML):
the engine stops at the end-of-turn token, the template writes one more newline.

Example::

    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> conv = TokenConversation(ChatTemplate(tok), [{"role": "user", "content": "2+3?"}])
    >>> out = tok.encode("5<|im_end|>", add_special_tokens=False)   # what an engine returns
    >>> conv.add_completion(out, [-0.5, -0.01])
    >>> obs = conv.add_observation([{"role": "user", "content": "Sure?"}])
    >>> tok.decode(obs)
    '\\n<|im_start|>user\\nSure?<|im_end|>\\n<|im_start|>assistant\\n'
    >>> conv.loss_mask == [1, 1] + [0] * len(obs), conv.num_turns, conv.messages[-2]
    (True, 1, {'role': 'assistant', 'content': '5'})
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agentrl.chat.control import clean
from agentrl.chat.incremental import TemplateNotIncrementalError, check_incremental
from agentrl.chat.template import ChatTemplate, Message

log = logging.getLogger(__name__)


class TokenConversation:
    """One episode's tokens, loss mask, rollout logprobs and text view.

    Args:
        template: the chat template (and tokenizer) of the policy model.
        messages: the opening messages (system/user...), rendered once as the prompt.
        tools: OpenAI-style tool declarations, passed to the template on every render.
        allow_non_incremental: keep going with a template that fails :func:`check_incremental`
            (a warning is logged instead of an error; ``ChatTemplate(..., allow_non_incremental=True)``
            does the same for every conversation on that template). Tokens stay exactly what the engine saw
            and observations are rendered with the fixed-prefix trick as usual; but
            ``apply_chat_template(messages)`` may then differ from ``tokens`` (e.g. a Qwen3
            template re-rendered would drop earlier ``<think>`` blocks that the tokens keep).
    """

    def __init__(
        self,
        template: ChatTemplate,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        *,
        allow_non_incremental: bool = False,
    ) -> None:
        messages = _checked(messages, "TokenConversation")
        if not messages:
            raise ValueError("TokenConversation needs at least one opening message; got none")
        try:
            check_incremental(template)
        except TemplateNotIncrementalError as exc:
            if not (allow_non_incremental or template.allow_non_incremental):
                raise
            if not template._warned_non_incremental:
                template._warned_non_incremental = True
                log.warning("continuing with a non-incremental chat template "
                            "(allow_non_incremental=True): %s", str(exc).splitlines()[0])
        self.template = template
        self.tools = list(tools) if tools else None
        self._messages: list[Message] = messages
        self._prompt_ids: list[int] = template.encode(self._messages, self.tools, add_generation_prompt=True)
        self._response_ids: list[int] = []
        self._loss_mask: list[int] = []
        self._logprobs: list[float] = []
        self._num_turns = 0
        # "prompt": ends with a generation prompt; "open": ends with a completion that has no
        # end-of-turn token (cut by length); "closed": ends with a completed assistant turn;
        # "final": ends with an observation rendered without a generation prompt.
        self._state = "prompt"

    # -- views --------------------------------------------------------------------------
    @property
    def prompt_ids(self) -> list[int]:
        """Tokens of the opening messages, through the first generation prompt."""
        return list(self._prompt_ids)

    @property
    def response_ids(self) -> list[int]:
        """Every token after the prompt: completions (mask 1) and observations (mask 0)."""
        return list(self._response_ids)

    @property
    def loss_mask(self) -> list[int]:
        """1 exactly on the tokens the engine produced; aligned with ``response_ids``."""
        return list(self._loss_mask)

    @property
    def logprobs(self) -> list[float]:
        """Engine logprob of each response token; 0.0 where ``loss_mask`` is 0."""
        return list(self._logprobs)

    @property
    def tokens(self) -> list[int]:
        """``prompt_ids + response_ids``: the engine's input for the next turn."""
        return self._prompt_ids + self._response_ids

    @property
    def messages(self) -> list[Message]:
        """Text view: opening messages, assistant texts, observation messages (copies)."""
        return [dict(m) for m in self._messages]

    @property
    def num_tokens(self) -> int:
        return len(self._prompt_ids) + len(self._response_ids)

    @property
    def num_turns(self) -> int:
        """Assistant turns so far (a completion continuing a cut turn does not count again)."""
        return self._num_turns

    @property
    def awaiting_completion(self) -> bool:
        """True when the tokens end with a generation prompt (or an unfinished assistant turn)."""
        return self._state in ("prompt", "open")

    # -- growing ------------------------------------------------------------------------
    def add_completion(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float] | None,
        text: str | None = None,
    ) -> None:
        """Append the engine's output as-is (mask 1) and an assistant message to the text view.

        ``token_ids`` include the end-of-turn token when the engine stopped on it. ``logprobs``
        must match them one to one (``None``: unknown, stored as 0.0). ``text`` is the
        assistant text for the view; by default the decoded ids without a trailing stop token.
        A completion after one that was cut by length continues the same assistant turn.
        """
        if self._state not in ("prompt", "open"):
            ends = "finished assistant turn" if self._state == "closed" else "final observation"
            raise RuntimeError(
                f"add_completion: the conversation ends with a {ends}, not a generation prompt; call "
                "add_observation(..., add_generation_prompt=True) before the next completion"
            )
        ids = [int(t) for t in token_ids]
        lps = [0.0] * len(ids) if logprobs is None else [float(x) for x in logprobs]
        if len(lps) != len(ids):
            raise ValueError(
                f"token_ids and logprobs must have equal lengths; got {len(ids)} and {len(lps)}"
            )
        self._response_ids += ids
        self._loss_mask += [1] * len(ids)
        self._logprobs += lps
        if text is None:
            text = self._decode_turn_text(ids)
        if self._state == "open":  # continue the turn that was cut
            self._messages[-1]["content"] = str(self._messages[-1].get("content") or "") + text
        else:
            self._messages.append({"role": "assistant", "content": text})
            self._num_turns += 1
        self._state = "closed" if self._ends_turn(ids) else "open"

    def add_observation(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Render ``messages`` alone (fixed-prefix trick), append them with mask 0, return their ids.

        The returned ids start with whatever the template writes after an assistant turn
        (``"\\n"`` for ChatML) and end with the next generation prompt (unless
        ``add_generation_prompt`` is False, e.g. for a final observation kept for the record).
        If the last completion did not end with an end-of-turn token, that token is appended
        first (mask 0) and included in the returned ids.
        """
        new = _checked(messages, "add_observation")
        if not new:
            raise ValueError("add_observation needs at least one message; got none")
        if self._state not in ("open", "closed"):
            raise RuntimeError(
                "add_observation: new messages must follow an assistant completion; the conversation "
                f"ends with {'a generation prompt' if self._state == 'prompt' else 'a final observation'}"
                + ("; call add_completion first" if self._state == "prompt" else "")
            )
        ids: list[int] = []
        if self._state == "open":
            ids += self.template.end_of_turn_ids
        ids += self.template.encode_continuation(new, self.tools, add_generation_prompt)
        self._response_ids += ids
        self._loss_mask += [0] * len(ids)
        self._logprobs += [0.0] * len(ids)
        self._messages += new
        self._state = "prompt" if add_generation_prompt else "final"
        return ids

    def to_sample_fields(self) -> dict[str, Any]:
        """The token fields of :class:`agentrl.types.Sample`.

        Keys: ``prompt_ids``, ``response_ids``, ``loss_mask``, ``rollout_logprobs`` (copies).
        Example: ``Sample(**conv.to_sample_fields(), messages=conv.messages,
        num_turns=conv.num_turns)``.
        """
        return {
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "loss_mask": self.loss_mask,
            "rollout_logprobs": self.logprobs,
        }

    # -- internals ---------------------------------------------------------------------
    def _ends_turn(self, ids: list[int]) -> bool:
        eot = self.template.end_of_turn_ids
        return len(ids) >= len(eot) and ids[len(ids) - len(eot):] == eot

    def _decode_turn_text(self, ids: list[int]) -> str:
        stops = set(self.template.stop_token_ids)
        end = len(ids)
        while end and ids[end - 1] in stops:
            end -= 1
        return self.template.tokenizer.decode(ids[:end], skip_special_tokens=False)

    def __repr__(self) -> str:
        return (
            f"TokenConversation(turns={self._num_turns}, prompt={len(self._prompt_ids)} tokens, "
            f"response={len(self._response_ids)} tokens, generated={sum(self._loss_mask)})"
        )


def _checked(messages: Any, where: str) -> list[Message]:
    """Copies of ``messages`` (lone surrogates, which no tokenizer encodes, replaced by U+FFFD; content
    ``None`` or missing as ``""`` unless the message carries ``tool_calls``), or a ``ValueError`` saying which
    message is not a chat message."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{where}: messages must be a list of dicts like {{'role': 'user', 'content': '...'}}; "
                         f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            got = type(m).__name__ if not isinstance(m, dict) else f"role {m.get('role')!r}"
            raise ValueError(f"{where}: message {i} must be a dict with a string 'role' (like "
                             f"{{'role': 'tool', 'content': '...'}}); got {got}")
    out = [clean(dict(m)) for m in messages]
    for m in out:  # "no text": templates write m['content'] and fail on a missing one
        if m.get("content") is None and not m.get("tool_calls"):
            m["content"] = ""
    return out
