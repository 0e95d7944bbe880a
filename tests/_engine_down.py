"""A generate function whose engine is down from rollout 1 on (tests/test_engine_failures.py)."""

from agentrl.engine.base import EngineError
from agentrl.rollout import run_episode


async def down_from_rollout_1(engine, template, request, config, *, reward_fn=None):
    if request.group_id >= 1_000_000:  # rollout r's groups are r * 1_000_000 + i
        raise EngineError("POST /generate failed after 9 attempts; last server tried: http://gone:30000")
    return await run_episode(engine, template, request, config, reward_fn=reward_fn)
