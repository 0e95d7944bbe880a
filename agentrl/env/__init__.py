"""The environment API: ``TextEnv``, spaces, registry, wrappers and ``check_env``."""

from agentrl.env.checker import EnvCheckError, EnvCheckReport, check_env
from agentrl.env.core import Messages, TextEnv, run_sync
from agentrl.env.registry import EnvNotFoundError, make, register, registered_ids, resolve_id
from agentrl.env.spaces import MessagesSpace, TextSpace
from agentrl.env.wrappers import GymnasiumWrappers, TextEnvWrapper, TokenBudget, TurnLimit, as_text_env

__all__ = [
    "EnvCheckError", "EnvCheckReport", "EnvNotFoundError", "GymnasiumWrappers", "Messages", "MessagesSpace",
    "TextEnv", "TextEnvWrapper", "TextSpace", "TokenBudget", "TurnLimit", "as_text_env", "check_env", "make",
    "register", "registered_ids", "resolve_id", "run_sync",
]
