"""Scale-out: several engines behind one, Ray actors and placement groups, fault tolerance.

* :class:`~agentrl.cluster.engine_pool.EnginePool` (no Ray): routes requests over engines,
  health-checks them, restarts dead or hung ones with the current weights and re-runs their
  requests elsewhere.
* :mod:`agentrl.cluster.ray_engine`, :mod:`agentrl.cluster.ray_trainer`,
  :mod:`agentrl.cluster.placement`, :mod:`agentrl.cluster.env_pool`,
  :mod:`agentrl.cluster.sglang_servers`: engines, the trainer, environments and SGLang servers
  as Ray actors in placement groups; :func:`agentrl.cluster.build.build_ray_components` wires
  them for ``--use-ray``.

Ray is imported only inside this package (and only by the modules that need it), so agentrl
stays importable without it. See ``docs/scaling.md``.
"""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.cluster.engine_pool import (EnginePool, PoolStats)

MODULES = {
    ".engine_pool": ["EnginePool", "PoolStats"],
}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
