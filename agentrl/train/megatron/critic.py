"""A Megatron value model for PPO with ``gae``: the policy's backbone with a scalar head.

The head replaces ``GPTModel.output_layer``: ``V(s_t) = w . h_t + b``, read at the position
that predicts token ``t`` (so values line up with the response columns, as the log-probs do).
``w`` and ``b`` start at zero, as in the torch backend's ``ValueModel``; they are replicated
over tensor-parallel ranks (every rank computes the same values).

Example::

    >>> critic = build_critic(hf_config, MegatronModelConfig())     # doctest: +SKIP
    >>> load_critic_backbone(critic, shape, "/path/to/hf_folder")    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from agentrl.train.megatron._compat import require_megatron

require_megatron()

from agentrl.train.megatron.convert import load_hf_weights  # noqa: E402
from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model  # noqa: E402
from agentrl.train.megatron.shape import ModelShape  # noqa: E402


class ValueHead(torch.nn.Module):
    """Stands in for ``output_layer``: ``hidden [s, b, h] -> ([s, b, 1], None)``."""

    def __init__(self, hidden_size: int, dtype: torch.dtype, device: torch.device | str,
                 sequence_parallel: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, hidden_size, dtype=dtype, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(1, dtype=dtype, device=device))
        self.sequence_parallel = sequence_parallel

    def forward(self, hidden: torch.Tensor, weight: Any = None, runtime_gather_output: Any = None,
                **_: Any) -> tuple[torch.Tensor, None]:
        if self.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            # every rank computes the same values: split (not sum) the gradient on the way back
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        return torch.nn.functional.linear(hidden, self.weight, self.bias), None


def build_critic(shape: ModelShape, options: MegatronModelConfig | None = None, **overrides: Any):
    """A ``GPTModel`` whose output layer (last pipeline stage) is a :class:`ValueHead`."""
    untied = dataclasses.replace(shape, tie_embeddings=False)
    model = build_gpt_model(untied, options, **overrides)
    if model.post_process:
        device = next(model.parameters()).device
        model.output_layer = ValueHead(shape.hidden_size, model.config.params_dtype, device,
                                       sequence_parallel=model.config.sequence_parallel)
    return model


def load_critic_backbone(critic: torch.nn.Module, shape: ModelShape, source: str | Path | Any) -> None:
    """Load the policy checkpoint's backbone into the critic (the value head stays as it is)."""
    load_hf_weights(critic, dataclasses.replace(shape, tie_embeddings=False), source,
                    skip_prefixes=("output_layer.",))
