"""Chat templates and token-in-token-out conversation bookkeeping.

* :class:`ChatTemplate`: render/encode messages with a tokenizer's jinja2 chat template (or a
  ``.jinja`` file); end-of-turn and stop token ids found by rendering.
* :class:`TokenConversation`: one episode as token ids; engine output appended as-is (loss
  mask 1), new messages rendered alone with the fixed-prefix trick (loss mask 0).
* :func:`check_incremental`: detect templates that cannot be extended by appending.
* :mod:`agentrl.chat.control`: special-token strings inside messages are encoded as text, so
  untrusted text (observations, prompts) cannot forge turns.

See ``docs/tokens.md``.
"""

from agentrl.chat.conversation import TokenConversation
from agentrl.chat.incremental import (
    PLAIN_PROBE_CONVERSATION,
    PROBE_CONVERSATION,
    PROBE_TOOLS,
    SYSTEM_PROBE_CONVERSATION,
    TemplateNotIncrementalError,
    check_incremental,
)
from agentrl.chat.template import ChatTemplate, ChatTemplateError, TemplateRenderError

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "PLAIN_PROBE_CONVERSATION",
    "PROBE_CONVERSATION",
    "PROBE_TOOLS",
    "SYSTEM_PROBE_CONVERSATION",
    "TemplateNotIncrementalError",
    "TemplateRenderError",
    "TokenConversation",
    "check_incremental",
]
