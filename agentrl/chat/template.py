"""Chat templates: render messages with a tokenizer's jinja2 template, and learn its turn format.

A :class:`ChatTemplate` wraps a Hugging Face tokenizer and a jinja2 chat template (the
tokenizer's own, a template string, or a ``.jinja`` file). Rendering goes through
``tokenizer.apply_chat_template``, so templates behave exactly as they do in transformers.

Besides rendering, it learns, by rendering probe conversations (never by hard-coding token
names), how an assistant turn is closed:

* ``end_of_turn_ids``: the token(s) that close an assistant turn (``<|im_end|>`` for ChatML,
  ``<|eot_id|>`` for Llama-3); the engine should stop on them (``stop_token_ids``);
* ``assistant_turn_tail``: text the template puts after that token (``"\\n"`` for ChatML); the
  engine never produces it, so it is rendered as part of the next observation;
* ``generation_prompt``: the text ``add_generation_prompt=True`` appends.

And it renders *continuations* (:meth:`ChatTemplate.render_continuation`): the text that follows
an assistant turn's end-of-turn token when new messages (tool results, user feedback) arrive,
found with the fixed-prefix trick (see ``docs/tokens.md``)::

    continuation = render(BASE + new, add_generation_prompt=True) - render(BASE)

where ``BASE`` is a fixed dummy conversation ending with an assistant turn, cut right after its
end-of-turn token. In practice the cut is found by position: the dummy assistant's content is a
unique marker, and the continuation is everything after the end-of-turn token that follows it.

Example::

    >>> from agentrl.models import load_tokenizer
    >>> tmpl = ChatTemplate(load_tokenizer("smollm2-135m-instruct"))
    >>> tmpl.end_of_turn_text, tmpl.assistant_turn_tail
    ('<|im_end|>', '\\n')
    >>> tmpl.render_continuation([{"role": "user", "content": "Hi"}])
    '\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from agentrl.chat.control import ControlTokens, clean, mark

log = logging.getLogger(__name__)

Message = dict[str, Any]

_MARKER = "\u2063AGENTRL-ASSISTANT-MARKER\u2063"
"""Assistant content used to find where the assistant's own text ends in a rendered turn."""

_BASE: tuple[Message, ...] = ({"role": "user", "content": "Hello."},)
"""The fixed dummy conversation (then an assistant turn holding ``_MARKER``) new messages follow."""


class ChatTemplateError(ValueError):
    """A chat template is missing, cannot be rendered, or does not have the expected shape."""


class TemplateRenderError(ChatTemplateError):
    """The template itself failed on these messages (a jinja2 error or its ``raise_exception``:
    roles it does not accept, a missing field such as a tool call id)."""


class ChatTemplate:
    """A tokenizer plus a jinja2 chat template.

    Args:
        tokenizer: a Hugging Face tokenizer (``PreTrainedTokenizer``/``TokenizersBackend``).
        chat_template: ``None`` to use ``tokenizer.chat_template``; a template string; or a path
            to a ``.jinja`` file.
        template_kwargs: extra variables passed to the template on every render
            (e.g. ``{"enable_thinking": False}`` for Qwen3, ``{"date_string": "26 Jul 2024"}``).
        allow_non_incremental: let every :class:`~agentrl.chat.TokenConversation` on this template
            (the episode loop's included) keep going when :func:`~agentrl.chat.check_incremental`
            refuses it, with a warning; see ``docs/tokens.md``.

    Example::

        >>> from agentrl.models import load_tokenizer
        >>> tmpl = ChatTemplate(load_tokenizer("smollm2-135m-instruct"))
        >>> ids = tmpl.encode([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
        >>> tmpl.tokenizer.decode(ids[-4:])
        '<|im_start|>assistant\\n'
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str | os.PathLike | None = None,
        *,
        template_kwargs: dict[str, Any] | None = None,
        allow_non_incremental: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.allow_non_incremental = allow_non_incremental
        self.source: str = _load_source(tokenizer, chat_template)
        """The jinja2 source of the template."""
        self.template_kwargs: dict[str, Any] = dict(template_kwargs or {})
        self._warned_tools = False
        self._warned_non_incremental = False
        # Result of check_incremental() on the default probe conversation:
        # None = not checked yet, True = incremental, an exception = not incremental.
        self._incremental: Any = None

    def __repr__(self) -> str:
        name = getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)
        return f"ChatTemplate(tokenizer={name!r}, supports_tools={self.supports_tools})"

    # -- rendering -------------------------------------------------------------------
    def render(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The template's text for ``messages`` (``tools`` passed to the template when given)."""
        return self._apply(clean(messages), clean(tools), add_generation_prompt)

    def encode(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> list[int]:
        """Token ids of :meth:`render`: the template's special tokens as tokens, message text as text.

        Special-token strings inside the messages or tool declarations (an observation holding
        ``"<|im_end|>"``) are encoded as plain text, not as the special tokens they spell (see
        :mod:`agentrl.chat.control`); for text without them this is exactly
        ``tokenizer.apply_chat_template(messages, tokenize=True)``.
        """
        ctl = self._control
        return ctl.encode(self._apply(mark(messages, ctl.pattern), mark(tools, ctl.pattern), add_generation_prompt))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of rendered template text (no BOS/EOS added: the template writes its own).

        Special-token strings in ``text`` become special tokens; for a message's own text use
        :meth:`encode_text`.
        """
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of one message's text as :meth:`encode` encodes it inside that message:
        special-token strings spelled out as plain text (a demonstration that mentions
        ``"<|im_end|>"`` does not end its turn there), lone surrogates as U+FFFD."""
        ctl = self._control
        return ctl.encode(mark(text, ctl.pattern))

    def render_continuation(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Text that follows an assistant turn's end-of-turn token when ``messages`` are appended.

        It starts with :attr:`assistant_turn_tail` (e.g. ``"\\n"``), then the rendered
        ``messages``, then the generation prompt when ``add_generation_prompt``. Found with
        the fixed-prefix trick: render a fixed dummy conversation that ends with an assistant
        turn followed by ``messages``, and keep what follows the dummy turn's end-of-turn token
        (the dummy assistant content is a unique marker, so it is found even where a template
        rewrites the text before it).
        """
        return self._continuation(clean(messages), clean(tools), add_generation_prompt)

    def _continuation(self, messages: list[Message], tools: Any, add_generation_prompt: bool) -> str:
        if not messages:
            raise ChatTemplateError("render_continuation needs at least one message; got none")
        text = self._apply([dict(_BASE[0]), {"role": "assistant", "content": _MARKER}, *messages],
                           tools, add_generation_prompt)
        closing = self._turn_suffix[: len(self._turn_suffix) - len(self.assistant_turn_tail)]
        at = text.find(_MARKER + closing)  # the dummy turn's end, wherever else the marker is written
        if at < 0:
            at = text.find(_MARKER)
            got = text[at + len(_MARKER): at + len(_MARKER) + 40] if at >= 0 else "(content not rendered)"
            raise ChatTemplateError(
                f"cannot render new messages on their own: after an assistant turn's content the template "
                f"wrote {got!r} when more messages followed, but {closing!r} when the turn was last. "
                f"The template is not incremental; see agentrl.chat.check_incremental."
            )
        return text[at + len(_MARKER) + len(closing):]

    def encode_continuation(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of :meth:`render_continuation`, encoded as :meth:`encode` encodes.

        Tokenizing the continuation on its own gives the same ids as tokenizing the whole
        conversation, because it starts right after a special token (the end-of-turn token),
        where tokenizers always split.
        """
        ctl = self._control
        return ctl.encode(self._continuation(mark(messages, ctl.pattern), mark(tools, ctl.pattern),
                                             add_generation_prompt))

    # -- what the template looks like ----------------------------------------------------
    @cached_property
    def supports_tools(self) -> bool:
        """Whether the template reads the ``tools`` variable (so tools reach the model)."""
        import jinja2
        from jinja2 import meta

        try:
            ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(self.source)
        except jinja2.TemplateSyntaxError:
            return "tools" in self.source
        return "tools" in meta.find_undeclared_variables(ast)

    @cached_property
    def generation_prompt(self) -> str:
        """Text appended by ``add_generation_prompt=True`` (e.g. ``'<|im_start|>assistant\\n'``)."""
        probe = [{"role": "user", "content": "Hello."}]
        without = self.render(probe)
        with_prompt = self.render(probe, add_generation_prompt=True)
        if not with_prompt.startswith(without):
            raise ChatTemplateError(
                "add_generation_prompt=True changed the text before the prompt; expected it to append "
                "only.\n" + short_diff(without, with_prompt)
            )
        return with_prompt[len(without):]

    @cached_property
    def _turn_suffix(self) -> str:
        """Text the template writes after an assistant message's content (e.g. '<|im_end|>\\n')."""
        text = self.render([dict(_BASE[0]), {"role": "assistant", "content": _MARKER}])
        at = text.rfind(_MARKER)
        if at < 0:
            raise ChatTemplateError(
                "the chat template did not render the assistant message's content; expected "
                "assistant turns to contain the message text verbatim"
            )
        return text[at + len(_MARKER):]

    @cached_property
    def end_of_turn_ids(self) -> list[int]:
        """Token ids that close an assistant turn (e.g. ``[<|im_end|> id]``), found by rendering.

        The first special (added) token the template writes after the assistant's content.
        """
        suffix = self._turn_suffix
        ids = self.tokenize(suffix)
        special = _special_ids(self.tokenizer)
        for i, t in enumerate(ids):
            if t in special:
                if i:
                    log.warning(
                        "the chat template writes %r between an assistant message and its end-of-turn "
                        "token; the engine does not produce it, so its tokens will differ from a re-render",
                        self.tokenizer.decode(ids[:i]),
                    )
                return [t]
        raise ChatTemplateError(
            f"could not find an end-of-turn token: after the assistant's content the template writes "
            f"{suffix!r}, which holds no special token; expected something like '<|im_end|>' or "
            f"'<|eot_id|>'. A template whose turns end without a special token cannot tell the engine "
            f"where to stop."
        )

    @cached_property
    def end_of_turn_text(self) -> str:
        """Text of :attr:`end_of_turn_ids`."""
        return self.tokenizer.decode(self.end_of_turn_ids)

    @cached_property
    def assistant_turn_tail(self) -> str:
        """Text after the end-of-turn token in a rendered assistant turn (``"\\n"`` for ChatML)."""
        suffix = self._turn_suffix
        at = suffix.find(self.end_of_turn_text)
        return suffix[at + len(self.end_of_turn_text):] if at >= 0 else ""

    @cached_property
    def stop_token_ids(self) -> list[int]:
        """Token ids the engine should stop on: end-of-turn ids, then eos (no duplicates)."""
        out = list(self.end_of_turn_ids)
        eos = self.tokenizer.eos_token_id
        for t in eos if isinstance(eos, list) else [eos]:
            if t is not None and t not in out:
                out.append(int(t))
        return out

    # -- internals ---------------------------------------------------------------------
    @cached_property
    def _control(self) -> ControlTokens:
        return ControlTokens(self.tokenizer)

    def _apply(self, messages: list[Message], tools: Any, add_generation_prompt: bool) -> str:
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ChatTemplateError(
                f"messages must be a list of dicts like {{'role': 'user', 'content': '...'}}; "
                f"got {type(messages).__name__}"
            )
        if tools and not self.supports_tools and not self._warned_tools:
            self._warned_tools = True  # decided on the first render with tools: the opening messages
            if not _names_tools(messages, tools):  # else the environment declares them in its prompt
                log.warning(
                    "tools were given but this chat template never reads 'tools': the model will not see "
                    "the tool declarations; declare them in the system prompt or use a template with tools"
                )
        kwargs: dict[str, Any] = dict(self.template_kwargs)
        if tools:
            kwargs["tools"] = tools
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.source,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **kwargs,
            )
        except Exception as exc:  # jinja2 errors, raise_exception() in templates
            roles = [m.get("role") for m in messages]
            raise TemplateRenderError(f"chat template failed on roles {roles}: {exc}") from exc


def _names_tools(messages: list[Message], tools: Any) -> bool:
    """Whether the messages' text names every tool of ``tools`` (OpenAI-style schemas): an environment that
    declares its tools in the system prompt (``ToolUseEnv(describe_tools=True)``) needs no template support."""
    text = "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))
    names = [(t.get("function") or t).get("name") if isinstance(t, dict) else None for t in tools]
    return all(isinstance(n, str) and re.search(rf"\b{re.escape(n)}\b", text) for n in names)


def _load_source(tokenizer: Any, chat_template: str | os.PathLike | None) -> str:
    if chat_template is None:
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates
            source = source.get("default") or next(iter(source.values()), None)
        if not source:
            name = getattr(tokenizer, "name_or_path", "the tokenizer")
            raise ChatTemplateError(
                f"{name} has no chat template; pass chat_template= a jinja2 string or a .jinja file path"
            )
        return str(source)
    if isinstance(chat_template, os.PathLike) or "{" not in str(chat_template):
        path = Path(chat_template).expanduser()
        if not path.is_file():
            raise ChatTemplateError(
                f"chat_template must be jinja2 source or the path of a .jinja file; got "
                f"{str(chat_template)[:80]!r}, which is neither a template nor an existing file"
            )
        return path.read_text(encoding="utf-8")
    return chat_template


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def short_diff(before: str, after: str, context: int = 60, max_lines: int = 16) -> str:
    """A short, readable account of where ``after`` stops extending ``before``."""
    import difflib

    i = 0
    n = min(len(before), len(after))
    while i < n and before[i] == after[i]:
        i += 1
    start = max(0, i - context)
    lines = [
        f"first difference at character {i}:",
        f"  before: ...{before[start:i + context]!r}",
        f"  after:  ...{after[start:i + context]!r}",
    ]
    diff = list(difflib.unified_diff(
        before.splitlines(), after.splitlines(), "before", "after", n=1, lineterm=""
    ))
    if diff:
        shown = diff[2:2 + max_lines]
        lines.append("  diff:")
        lines.extend("    " + d for d in shown)
        if len(diff) - 2 > max_lines:
            lines.append(f"    ... ({len(diff) - 2 - max_lines} more diff lines)")
    return "\n".join(lines)
