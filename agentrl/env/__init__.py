"""The environment API: ``TextEnv``, spaces, registry, wrappers and ``check_env``."""

from agentrl.env.checker import EnvCheckError, EnvCheckReport, check_env
from agentrl.env.core import Messages, TextEnv
from agentrl.env.registry import EnvNotFoundError, make, register, registered_ids, resolve_id
from agentrl.env.spaces import MessagesSpace, TextSpace
from agentrl.env.wrappers import TextEnvWrapper, TokenBudget, TurnLimit

__all__ = [
    "EnvCheckError", "EnvCheckReport", "EnvNotFoundError", "Messages", "MessagesSpace", "TextEnv",
    "TextEnvWrapper", "TextSpace", "TokenBudget", "TurnLimit", "check_env", "make", "register",
    "registered_ids", "resolve_id",
]
