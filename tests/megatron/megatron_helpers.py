"""Shared helpers for the Megatron tests: random tiny HF models and random samples."""

from __future__ import annotations

import torch

from agentrl.testing import tiny_config
from agentrl.types import Sample

ARCHS = ("llama", "qwen2", "qwen3")


def random_hf_model(arch: str, vocab_size: int = 256, seed: int = 0, **overrides):
    """A tiny HF causal LM with every weight (norms and biases too) drawn from N(0, 0.3^2), so a
    wrong layout or a missed bias shows up in the logits."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def random_samples(n: int, vocab: int, seed: int = 0, *, max_prompt: int = 8, max_response: int = 12) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = int(torch.randint(1, max_prompt + 1, (1,), generator=g))
        r = int(torch.randint(1, max_response + 1, (1,), generator=g))
        mask = [1 if float(torch.rand(1, generator=g)) < 0.8 else 0 for _ in range(r)]
        out.append(Sample(
            prompt_ids=torch.randint(0, vocab, (p,), generator=g).tolist(),
            response_ids=torch.randint(0, vocab, (r,), generator=g).tolist(),
            loss_mask=mask, rollout_logprobs=[-1.0 if m else 0.0 for m in mask],
            reward=float(i % 2), group_id=i // 3, sample_index=i % 3))
    return out
