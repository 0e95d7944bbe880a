"""The embedded inference engine: an HF causal LM in-process, continuous batching, KV cache.

Example::

    >>> import asyncio
    >>> from agentrl.engine import SamplingParams
    >>> from agentrl.engine.embedded import EmbeddedEngine
    >>> engine = EmbeddedEngine("tiny-qwen2", max_batch_size=4, max_seq_len=128)   # doctest: +SKIP
    >>> asyncio.run(engine.generate([1, 2, 3], SamplingParams(max_new_tokens=5))).finish_reason  # doctest: +SKIP
    'length'

See ``docs/engine.md`` for the design and the measurements behind it.
"""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.engine.embedded.config import EngineConfig, InvalidRequest
    from agentrl.engine.embedded.engine import EmbeddedEngine
    from agentrl.engine.embedded.request import SchedulerStats

MODULES = {".config": ["EngineConfig", "InvalidRequest"], ".engine": ["EmbeddedEngine"], ".request": ["SchedulerStats"]}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
