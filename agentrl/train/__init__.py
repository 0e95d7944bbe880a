"""Trainers: the ``Trainer`` protocol, the batch they consume, and the torch backend.

The Megatron backend lives in ``agentrl.train.megatron`` and is imported only when asked for.
"""

from agentrl.train.base import TrainConfig, Trainer
from agentrl.train.batch import RolloutBatch, micro_batches, optimizer_steps

__all__ = ["RolloutBatch", "TrainConfig", "Trainer", "TorchTrainer", "micro_batches", "optimizer_steps"]


def __getattr__(name: str):
    if name == "TorchTrainer":  # keeps `import agentrl.train` light
        from agentrl.train.torch_trainer import TorchTrainer

        return TorchTrainer
    raise AttributeError(name)
