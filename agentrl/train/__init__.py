"""Trainers: the ``Trainer`` protocol, the batch they consume, their settings, and the torch backend.

The Megatron backend lives in ``agentrl.train.megatron``. Names are imported on first use, so reading
the settings (``agentrl.train.config``) does not import torch.
"""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.train.base import Trainer
    from agentrl.train.batch import RolloutBatch, micro_batches, optimizer_steps
    from agentrl.train.config import TrainConfig
    from agentrl.train.torch_trainer import TorchTrainer

MODULES = {".base": ["Trainer"], ".config": ["TrainConfig"], ".batch": ["RolloutBatch", "micro_batches", "optimizer_steps"],
           ".torch_trainer": ["TorchTrainer"]}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
