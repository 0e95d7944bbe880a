"""Stop strings: find them in the decoded tail of a completion, cheaply.

Only generated tokens are searched (not the prompt), as SGLang does. A stop string can only
be completed by a token whose own text holds the string's last character, so the tail is
decoded only when the newest token's text (cached per token id) passes that test, holds a
partial UTF-8 character, or a stop string ends in whitespace (tokenizers may drop a leading
space when decoding one token alone).

Example::

    >>> from agentrl.models import load_tokenizer
    >>> tok = load_tokenizer("tiny-qwen2")                               # doctest: +SKIP
    >>> ids = tok.encode("call <search>x</search> now")                  # doctest: +SKIP
    >>> StopStrings(tok).find(ids, ["</search>"])                         # doctest: +SKIP
    '</search>'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class StopStrings:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def _piece(self, token: int) -> str:
        text = self._text.get(token)
        if text is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            self._text[token] = text
        return text

    def find(self, generated: Sequence[int] | np.ndarray, stops: Sequence[str]) -> str | None:
        """The stop string that the generated tokens now contain, if any (the first listed wins)."""
        if not stops or len(generated) == 0:
            return None
        piece = self._piece(int(generated[-1]))
        if "\ufffd" not in piece and not any(s[-1] in piece or s[-1].isspace() for s in stops):
            return None
        window = 4 * max(len(s) for s in stops) + 2  # a character is at most 4 byte-tokens
        text = self.tokenizer.decode(list(generated[-window:]), skip_special_tokens=False)
        for s in stops:
            if s in text:
                return s
        return None
