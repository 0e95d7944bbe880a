"""Where the actors go: one Ray placement group for the trainer and the engines.

:func:`plan_placement` (pure, no Ray) decides the bundles; :func:`create_placement` reserves them
and :meth:`Placement.options` gives an actor's ``.options(...)`` for its bundle.

* **disaggregated** (``--no-colocate``): the trainer gets a bundle of 1 GPU, each engine a bundle
  of ``rollout_num_gpus_per_engine`` GPUs (an SGLang server's tensor-parallel size). Generation
  and training run on different GPUs and can overlap (``--max-staleness``).
* **colocated** (``--colocate``): trainer and engines share one bundle (the trainer's GPU); each
  takes a fraction of it, so Ray schedules them onto the same device. In a synchronous run the
  engines free their KV cache before each training step and take it back after the weight sync.
* **CPU clusters** (no GPUs): one bundle of ``cpus_per_actor`` CPUs per actor; colocation does
  not apply.

A trainer group (``--actor-num-gpus-per-node`` > 1, :mod:`agentrl.cluster.trainer_group`) gets one
bundle per rank (``trainer_bundles``); colocated engines share the first ranks' GPUs, one engine per
rank's GPU. Several engines scale generation.

Example::

    >>> plan = plan_placement(num_engines=2, gpus_per_engine=1, colocate=False, use_gpu=True)
    >>> plan.bundles, plan.trainer_bundle, plan.engine_bundles
    ([{'GPU': 1.0, 'CPU': 1.0}, {'GPU': 1.0, 'CPU': 1.0}, {'GPU': 1.0, 'CPU': 1.0}], 0, [1, 2])
    >>> plan_placement(num_engines=1, gpus_per_engine=1, colocate=True, use_gpu=True).engine_gpus
    0.5
    >>> plan = plan_placement(num_engines=1, colocate=False, use_gpu=False, trainer_ranks=2, cpus_per_actor=0.5)
    >>> plan.bundles, plan.trainer_bundles, plan.engine_bundles
    ([{'CPU': 0.5}, {'CPU': 0.5}, {'CPU': 0.5}], [0, 1], [2])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class PlacementPlan:
    """Bundles of one placement group and which actor uses which."""

    bundles: list[dict[str, float]]
    trainer_bundle: int
    engine_bundles: list[int]
    trainer_gpus: float
    """GPUs the trainer actor asks for (within its bundle)."""
    engine_gpus: float
    """GPUs each engine actor asks for (within its bundle)."""
    cpus_per_actor: float
    colocate: bool
    strategy: str = "PACK"
    trainer_bundles: list[int] = field(default_factory=lambda: [0])
    """The bundle of each trainer rank (rank r in ``trainer_bundles[r]``)."""


def plan_placement(num_engines: int, gpus_per_engine: int = 1, *, colocate: bool, use_gpu: bool,
                   cpus_per_actor: float = 1.0, trainer_ranks: int = 1) -> PlacementPlan:
    """Bundles for ``trainer_ranks`` trainer ranks and ``num_engines`` engines (see the module doc)."""
    if num_engines < 1 or gpus_per_engine < 1 or trainer_ranks < 1:
        raise ValueError(f"num_engines, gpus_per_engine and trainer_ranks must be >= 1; got {num_engines}, "
                         f"{gpus_per_engine}, {trainer_ranks}")
    cpu = float(cpus_per_actor)
    ranks = list(range(trainer_ranks))
    if not use_gpu:
        bundles = [{"CPU": cpu} for _ in range(num_engines + trainer_ranks)]
        return PlacementPlan(bundles, 0, list(range(trainer_ranks, trainer_ranks + num_engines)), 0.0, 0.0, cpu,
                             colocate=False, trainer_bundles=ranks)
    if colocate and trainer_ranks > 1:
        if gpus_per_engine != 1 or num_engines > trainer_ranks:
            raise ValueError(f"--colocate puts each engine on one trainer rank's GPU; {num_engines} engine(s) x "
                             f"{gpus_per_engine} GPU(s) do not fit {trainer_ranks} ranks' GPUs one each")
        bundles = [{"GPU": 1.0, "CPU": cpu * (2 if r < num_engines else 1)} for r in ranks]
        return PlacementPlan(bundles, 0, list(range(num_engines)), 0.5, 0.5, cpu, colocate=True,
                             trainer_bundles=ranks)
    if trainer_ranks > 1:
        bundles = [{"GPU": 1.0, "CPU": cpu} for _ in ranks]
        bundles += [{"GPU": float(gpus_per_engine), "CPU": cpu} for _ in range(num_engines)]
        return PlacementPlan(bundles, 0, list(range(trainer_ranks, trainer_ranks + num_engines)), 1.0,
                             float(gpus_per_engine), cpu, colocate=False, trainer_bundles=ranks)
    if colocate:
        if num_engines * gpus_per_engine != 1:
            raise ValueError(
                f"--colocate puts the engines on the trainer's GPU; {num_engines} engine(s) x {gpus_per_engine} "
                "GPU(s) do not fit one GPU: use --no-colocate (engines on their own GPUs) or --num-engines 1")
        bundle = {"GPU": 1.0, "CPU": cpu * (num_engines + 1)}
        return PlacementPlan([bundle], 0, [0] * num_engines, 0.5, 0.5 / num_engines, cpu, colocate=True)
    bundles = [{"GPU": 1.0, "CPU": cpu}] + [{"GPU": float(gpus_per_engine), "CPU": cpu} for _ in range(num_engines)]
    return PlacementPlan(bundles, 0, list(range(1, num_engines + 1)), 1.0, float(gpus_per_engine), cpu,
                         colocate=False)


@dataclass
class Placement:
    """A reserved placement group and its plan."""

    plan: PlacementPlan
    group: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self, bundle: int, *, num_gpus: float, num_cpus: float) -> dict[str, Any]:
        """``actor_cls.options(**placement.options(...))`` pins an actor to ``bundle``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=bundle)
        return {"num_gpus": num_gpus, "num_cpus": num_cpus, "scheduling_strategy": strategy}

    def trainer_options(self, rank: int = 0) -> dict[str, Any]:
        p = self.plan
        return self.options(p.trainer_bundles[rank], num_gpus=p.trainer_gpus, num_cpus=self._cpus())

    def engine_options(self, index: int) -> dict[str, Any]:
        p = self.plan
        return self.options(p.engine_bundles[index], num_gpus=p.engine_gpus, num_cpus=self._cpus())

    def _cpus(self) -> float:
        return self.plan.cpus_per_actor

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def create_placement(plan: PlacementPlan, timeout: float = 600.0) -> Placement:
    """Reserve the plan's bundles; raise a clear error when the cluster cannot hold them."""
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group(plan.bundles, strategy=plan.strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout)
    if not ready:
        available = ray.available_resources()
        raise RuntimeError(f"the Ray cluster could not reserve {plan.bundles} within {timeout:.0f} s "
                           f"(available: { {k: v for k, v in available.items() if k in ('CPU', 'GPU')} }); "
                           "lower --num-engines / --rollout-num-gpus-per-engine or add nodes")
    log.info("placement group ready: %s (%s)", plan.bundles, "colocated" if plan.colocate else "disaggregated")
    return Placement(plan, group)


def init_ray(address: str | None = None, **kwargs: Any) -> bool:
    """Join the cluster at ``address`` (``auto``, ``HOST:6379``, ``ray://HOST:10001``) or start a
    local one; reuse a running session. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
    return True
