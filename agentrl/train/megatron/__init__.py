"""The Megatron-core trainer backend: ``GPTModel`` from HF configs, weight conversion, TP/PP/DP.

megatron-core is optional: importing this package does not import it; using any name below
does, and fails with the install command when it is missing.

Example::

    >>> from agentrl.train.megatron import MegatronTrainer, MegatronTrainerConfig   # doctest: +SKIP
    >>> trainer = MegatronTrainer(MegatronTrainerConfig(model="tiny-qwen2"))        # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from agentrl.train.megatron._compat import INSTALL_HINT, MegatronNotInstalledError, megatron_available

_EXPORTS = {
    "MegatronTrainer": "trainer",
    "MegatronTrainerConfig": "config",
    "broadcast_batch": "trainer",
    "MegatronModelConfig": "model",
    "build_gpt_model": "model",
    "ModelShape": "shape",
    "load_hf_weights": "convert",
    "export_hf_weights": "convert",
    "save_hf_checkpoint": "convert",
    "vocab_parallel_logprobs": "logprobs",
    "init_parallel": "parallel",
    "destroy_parallel": "parallel",
}

__all__ = sorted(_EXPORTS) + ["INSTALL_HINT", "MegatronNotInstalledError", "megatron_available"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
