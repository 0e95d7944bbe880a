"""Message text is text: special-token strings inside messages never become special tokens.

A tool result, a web page, a dataset prompt or a model's own text may contain the *strings* of the
tokenizer's special tokens (``"<|im_end|>"``, ``"<|im_start|>assistant"``, ``"<|eot_id|>"``, the
eos/bos/pad strings). Tokenizing a rendered chat as one string would turn them into the real
tokens: a forged turn boundary, a fake assistant turn inside an observation. Here only the
special tokens the chat template writes itself are encoded as tokens:

1. :func:`mark` wraps every special-token string found in the messages (and tool declarations)
   in two private-use marker characters, recursively through dicts and lists (dict keys are not
   touched); markers already in the input are dropped first, so they cannot be forged. It also
   replaces lone surrogates (which no tokenizer can encode) with U+FFFD.
2. The template renders the marked messages as usual.
3. :meth:`ControlTokens.encode` tokenizes the rendered text: the text between markers normally
   (the template's own special tokens stay tokens), each marked string as plain text.

Covered: the tokenizer's special tokens (added tokens marked ``special``, plus bos/eos/pad/unk and
``additional_special_tokens``), and the added tokens listed in ``tokenizer.chat_control_tokens``
when the tokenizer sets it. Not covered: non-special added tokens such as Qwen's ``<tool_call>``
or ``<think>``: they are ordinary vocabulary that the model writes itself, so message text holding
them is tokenized as the model would write it. Text without any special-token string is tokenized
exactly as ``tokenizer.encode`` does.

Example::

    >>> from agentrl.models import load_tokenizer
    >>> tok = load_tokenizer("smollm2-135m-instruct")
    >>> ctl = ControlTokens(tok)
    >>> text = "<|im_start|>user\\n" + mark("hi<|im_end|>", ctl.pattern) + "<|im_end|>"
    >>> [t for t in ctl.encode(text) if t in (1, 2)]          # <|im_start|>, <|im_end|> ids
    [1, 2]
"""

from __future__ import annotations

import re
from typing import Any

START = "\U000f8ff0"
END = "\U000f8ff1"
"""Private-use characters put around a special-token string found in message text."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The strings of ``tokenizer``'s special tokens (and of its ``chat_control_tokens``, if any)."""
    out = {str(s) for s in (getattr(tokenizer, "all_special_tokens", None) or []) if s}
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False) and getattr(tok, "content", ""):
            out.add(tok.content)
    out |= {str(s) for s in (getattr(tokenizer, "chat_control_tokens", None) or []) if s}
    # whitespace tokens (Gemma's "\n" runs) are what ordinary text is made of, not turn markers
    return tuple(sorted(s for s in out if s and not s.isspace()))


def trie_pattern(strings: tuple[str, ...]) -> str:
    """A regex matching any of ``strings``, longest first, built as a prefix trie so that a
    vocabulary with thousands of special tokens is still matched in time linear in the text."""
    if not strings:
        return "(?!)"  # matches nothing
    trie: dict[str, Any] = {}
    for s in strings:
        node = trie
        for ch in s:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body  # a longer match is tried first

    return build(trie)


def mark(obj: Any, pattern: re.Pattern[str]) -> Any:
    """``obj`` (a string, or dicts/lists of them) with each special-token string wrapped in
    :data:`START`/:data:`END`, earlier markers dropped and lone surrogates replaced by U+FFFD."""
    if isinstance(obj, str):
        if START in obj or END in obj:
            obj = obj.replace(START, "").replace(END, "")
        obj = clean(obj)
        return pattern.sub(lambda m: START + m.group(0) + END, obj)
    if isinstance(obj, dict):
        return {k: mark(v, pattern) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mark(v, pattern) for v in obj]
    return obj


def clean(obj: Any) -> Any:
    """``obj`` (a string, or dicts/lists of them) with lone surrogates replaced by U+FFFD."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj) if _SURROGATE.search(obj) else obj
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def unmark(text: str) -> str:
    """Rendered text without the markers: the text the model reads."""
    return text.replace(START, "").replace(END, "") if START in text or END in text else text


class ControlTokens:
    """The special tokens of a tokenizer, and the encoder of marked rendered text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.strings = special_strings(tokenizer)
        self.pattern = re.compile(trie_pattern(self.strings))
        self._split = re.compile(f"{START}({self.pattern.pattern}){END}|[{START}{END}]")
        self._ids = {s: tokenizer.convert_tokens_to_ids(s) for s in self.strings}
        self._lead = self._leading_special()

    def encode(self, text: str) -> list[int]:
        """Token ids of marked rendered ``text``: marked strings as plain text, the rest as usual.

        Each marker is a token boundary (as a special token would be), so a message's tokens do
        not depend on what the template writes around them: rendering a message alone or inside a
        whole conversation gives the same ids.
        """
        pieces = self._split.split(text)  # [text, marked, text, marked, ..., text]; None: a lone marker
        ids = self._encode(pieces[0], first=True)
        for i, piece in enumerate(pieces[1:], start=1):
            if piece:
                ids += self._plain(piece) if i % 2 == 1 else self._encode(piece, first=False)
        return ids

    def _encode(self, text: str, first: bool) -> list[int]:
        """``text`` as the tokenizer encodes it at the start of the input, or right after a special token."""
        if first or self._lead is None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        lead, lead_id = self._lead
        ids = list(self.tokenizer.encode(lead + text, add_special_tokens=False))
        return ids[1:] if ids and ids[0] == lead_id else list(self.tokenizer.encode(text, add_special_tokens=False))

    def _plain(self, text: str) -> list[int]:
        """``text`` (one special-token string) as ordinary text: no added token matched."""
        ids = self._no_added_tokens(text)
        if self._ids.get(text) in ids:  # the vocabulary spells it as itself: spell it character by character
            ids = [t for ch in text for t in self._no_added_tokens(ch)]
        return ids

    def _no_added_tokens(self, text: str) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a Python tokenizer: split_special_tokens is a plain argument there
            return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
        # the backend's own pipeline without its added tokens (setting encode_special_tokens on a
        # shared tokenizer would race with other threads encoding at the same time)
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
        return [t.id for s in splits for t in backend.model.tokenize(s)]

    def _leading_special(self) -> tuple[str, int] | None:
        """A special token put before a piece so that the piece is encoded as it is right after a
        marker (SentencePiece-style tokenizers add a prefix space at the start of the input only)."""
        for s, i in self._ids.items():
            added = (getattr(self.tokenizer, "added_tokens_decoder", None) or {}).get(i)
            if getattr(added, "lstrip", False) or getattr(added, "rstrip", False):  # it would eat spaces
                continue
            if list(self.tokenizer.encode(s + "a", add_special_tokens=False))[:1] == [i]:
                return s, i
        return None
