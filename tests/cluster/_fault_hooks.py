"""A generate function that kills engine actor 0 when rollout 1's first episode starts (fault injection)."""

from agentrl.rollout import run_episode


async def kill_engine_in_rollout_1(engine, template, request, config, *, reward_fn=None):
    if request.group_id == 1_000_000 and request.sample_index == 0:
        import ray

        pool = getattr(engine, "engine", engine)  # unwrap the async rollout's InterruptibleEngine
        ray.kill(pool.engines[0].actor, no_restart=True)
    return await run_episode(engine, template, request, config, reward_fn=reward_fn)
