"""The trainer contract and its settings, shared by the torch and the Megatron backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from torch import Tensor

from agentrl.train.batch import RolloutBatch
from agentrl.train.config import TrainConfig

__all__ = ["TrainConfig", "Trainer"]


@runtime_checkable
class Trainer(Protocol):
    """What the training loop needs from a backend."""

    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` logprobs of the response tokens under the current policy (no grad)."""
        ...

    def needs_old_logprobs(self, num_steps: int) -> bool:
        """False when ``train_step`` can take the old logprobs from its own forward pass."""
        ...

    def compute_ref_logprobs(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` logprobs under the frozen reference model."""
        ...

    def compute_values(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` critic values (gae)."""
        ...

    def train_step(self, batch: RolloutBatch, num_steps: int = 1) -> dict[str, float]:
        """``num_steps`` optimiser steps over ``batch`` (with ``advantages`` set); ``train/`` metrics."""
        ...

    def weights(self) -> Iterator[tuple[str, Tensor]]:
        """Hugging Face-named weights for the engine."""
        ...

    def save(self, path: str) -> None: ...

    def load(self, path: str) -> None: ...

    def export_hf(self, path: str) -> None:
        """Write a Hugging Face model folder (loadable by transformers and SGLang)."""
        ...
