"""``--use-ray``: the run's components with the trainer and the engines as Ray actors.

:func:`build_ray_components` joins (``--ray-address``) or starts a Ray cluster, reserves one
placement group (:mod:`agentrl.cluster.placement`), starts one :class:`RayTrainerActor` and
``--num-engines`` engines (embedded-engine actors, or SGLang servers with ``--engine sglang``)
behind an :class:`~agentrl.cluster.EnginePool`, and optionally ``--num-env-workers`` environment
actors. Everything else (data, template, rollout, evaluation) is built as in a single-process run,
so the loop, the recipes and the metrics are the same.

Example::

    python train.py --config recipes/quickstart/config.yaml --use-ray --num-engines 2
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from agentrl.cluster.engine_pool import EnginePool
from agentrl.components import (Components, build_eval_config, build_interruptible, build_rollout, build_template,
                                engine_config, load_eval_tasks, load_hooks, output_dir)
from agentrl.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


@dataclass
class RayComponents(Components):
    """:class:`~agentrl.components.Components` plus what must be released at the end of the run."""

    placement: Any = None
    env_pool: Any = None
    started_ray: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        """Stop engines, trainer and env workers; free the placement group (and Ray, if we started it)."""
        import ray

        await self.engine.close()
        for closer in (getattr(self.trainer, "close", None), getattr(self.env_pool, "close", None),
                       getattr(self.placement, "remove", None)):
            if closer is not None:
                try:
                    closer()
                except Exception as exc:
                    log.warning("cleanup: %s", exc)
        if self.started_ray:
            ray.shutdown()


def build_ray_components(cfg: RunConfig) -> RayComponents:
    if cfg.prompt_data is None:  # before any actor starts
        raise ConfigError(["--prompt-data is required (a .jsonl/.parquet file of prompts)"])
    import ray

    from agentrl.cluster.placement import create_placement, init_ray, plan_placement
    from agentrl.cluster.ray_trainer import RayTrainer
    from agentrl.cluster.trainer_group import TrainerGroup, check_cluster
    from agentrl.data import PromptSampler, load_prompts

    generate_fn, reward_fn = load_hooks(cfg)  # a hook that cannot be loaded stops the run before any actor starts
    started = init_ray(cfg.cluster.ray_address)
    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) > 0 and cfg.device != "cpu"
    ranks = cfg.group.world_size
    problems = check_cluster(ranks, resources, use_gpu)
    if problems:
        if started:
            ray.shutdown()
        raise ConfigError(problems)
    actors = ranks + cfg.cluster.num_engines
    cpus = cpus_per_actor(resources.get("CPU", 1.0), actors + cfg.cluster.num_env_workers)
    plan = plan_placement(cfg.cluster.num_engines, cfg.cluster.rollout_num_gpus_per_engine, colocate=cfg.engine.colocate,
                          use_gpu=use_gpu, cpus_per_actor=cpus, trainer_ranks=ranks)
    placement = create_placement(plan)
    # the RayTrainer (one rank) or the TrainerGroup, with SGLang wrapped to send weights: all serve the calls
    trainer: Any
    try:
        if ranks > 1:
            trainer = TrainerGroup.spawn(cfg, options=[placement.trainer_options(r) for r in range(ranks)])
        else:
            trainer = RayTrainer.spawn(cfg, options=placement.trainer_options(), weight_sync=cfg.cluster.ray_weight_sync)
    except BaseException:  # a trainer that failed to start: its actors go with the placement group
        placement.remove()
        if started:
            ray.shutdown()
        raise
    if cfg.engine.kind == "sglang" and ranks > 1:  # SGLang's in-memory path from the group's rank 0
        from agentrl.cluster.sglang_servers import InMemoryWeightsTrainer

        trainer = InMemoryWeightsTrainer(trainer, backend="nccl" if use_gpu else "gloo",
                                         bucket_bytes=cfg.group.update_weight_buffer_size)
    elif cfg.engine.kind == "sglang":
        from agentrl.cluster.sglang_servers import DiskWeightsTrainer

        trainer = DiskWeightsTrainer(trainer, output_dir(cfg) / "weights")
    engine = build_engine_pool(cfg, placement)

    dataset = load_prompts(cfg.prompt_data, cfg.data)
    sampler = PromptSampler(dataset.rows, seed=cfg.seed)
    template = build_template(cfg, trainer.tokenizer)
    env_pool = None
    if cfg.cluster.num_env_workers:
        from agentrl.cluster.env_pool import RayEnvPool

        env_pool = RayEnvPool(cfg.cluster.num_env_workers, options={"num_cpus": cpus})
        if generate_fn is not None:
            log.warning("--num-env-workers: the custom generate function makes its own environments; "
                        "they run in the driver")
        else:
            generate_fn = env_pool.generate_fn()
    interruptible = build_interruptible(cfg, engine)
    rollout = build_rollout(cfg, interruptible or engine, template, generate_fn, reward_fn)
    eval_config = build_eval_config(cfg)
    log.info("Ray run: trainer %s, %d engine(s) (%s), %d env worker(s), %s", trainer.where(), cfg.cluster.num_engines,
             cfg.engine.kind, cfg.cluster.num_env_workers, "colocated" if plan.colocate else "disaggregated")
    return RayComponents(engine, trainer, template, rollout, sampler, dataset, load_eval_tasks(cfg), eval_config,
                         interruptible, placement=placement, env_pool=env_pool, started_ray=started)


def build_engine_pool(cfg: RunConfig, placement: Any) -> EnginePool:
    """``--num-engines`` engines in their bundles, behind an :class:`EnginePool` that restarts
    them (``--use-fault-tolerance``) in the same bundle."""
    import ray

    if cfg.engine.kind == "sglang":
        return _sglang_pool(cfg, placement)
    from agentrl.cluster.ray_engine import RayEngine

    kwargs = {"engine_kwargs": {"dtype": cfg.engine.dtype, "config": engine_config(cfg)},
              "hang_timeout": max(cfg.cluster.engine_health_timeout, 60.0)}  # device: the actor's own GPU, else its CPUs

    def spawn(i: int) -> RayEngine:
        return RayEngine.spawn(cfg.model_path, options=placement.engine_options(i), name=f"engine-{i}", **kwargs)

    async def factory(i: int) -> RayEngine:
        return await spawn(i).ready()

    engines = [spawn(i) for i in range(cfg.cluster.num_engines)]
    versions = ray.get([e.actor.weight_version.remote() for e in engines])  # wait until every model is loaded
    for e, v in zip(engines, versions):
        e._version = int(v)
    return _pool(cfg, engines, factory)


def _sglang_pool(cfg: RunConfig, placement: Any) -> EnginePool:
    import asyncio

    from agentrl.cluster.sglang_servers import spawn_server

    if cfg.engine.sglang_url:  # servers someone else runs: routed and health-checked, not restarted by us
        from agentrl.engine.sglang import SGLangEngine

        return EnginePool([SGLangEngine(url, max_retries=1) for url in cfg.engine.sglang_url], factory=None,
                          health_interval=cfg.cluster.engine_health_interval, health_timeout=cfg.cluster.engine_health_timeout)

    def start(i: int):
        return spawn_server(cfg.model_path, i, options=placement.engine_options(i), base_port=30000,
                            tp=cfg.cluster.rollout_num_gpus_per_engine, extra_args=list(cfg.engine.sglang_args))

    async def start_all():
        return await asyncio.gather(*(start(i) for i in range(cfg.cluster.num_engines)))

    engines = _run_sync(start_all())
    return _pool(cfg, engines, start)


def _pool(cfg: RunConfig, engines: list[Any], factory: Any) -> EnginePool:
    return EnginePool(engines, factory=factory if cfg.cluster.use_fault_tolerance else None,
                      health_interval=cfg.cluster.engine_health_interval, health_timeout=cfg.cluster.engine_health_timeout)


def cpus_per_actor(total: float, actors: int) -> float:
    """One CPU per actor when the cluster has them, else an equal share (in quarters, >= 0.25).

    Example::

        >>> cpus_per_actor(16, 3), cpus_per_actor(2, 3)
        (1.0, 0.5)
    """
    return max(0.25, min(1.0, math.floor(4 * total / max(actors, 1)) / 4))


def _run_sync(coro: Any) -> Any:
    """Run a coroutine from synchronous code that may itself be inside a running event loop."""
    import asyncio
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()

