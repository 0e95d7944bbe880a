"""Tiny random models with a real tokenizer, for fast CPU tests and GPU throughput work.

The weights are random (seeded), the shapes are those of real families (Qwen2, Llama, Qwen3),
and the tokenizer is SmolLM2's real ChatML tokenizer, so chat templates and token bookkeeping
behave as with a real model. Throughput does not depend on the weights.

Example::

    >>> path = tiny_model_path("qwen2")        # doctest: +SKIP
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(path)   # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from agentrl.models import cache_dir, load_tokenizer

TINY_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}


def tiny_config(arch: str = "qwen2", vocab_size: int = 49152, **overrides: Any):
    """A transformers config of a tiny model of the given family."""
    from transformers import AutoConfig

    if arch not in TINY_SHAPES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {sorted(TINY_SHAPES)}")
    kw = dict(TINY_SHAPES[arch])
    model_type = kw.pop("model_type")
    kw.update(vocab_size=vocab_size, max_position_embeddings=4096, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


BENCH_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6),
}
"""Real model shapes (random weights) for throughput work: ``make_tiny_model(p, "qwen2", **BENCH_SHAPES[...])``."""


def make_tiny_model(path: str | Path, arch: str = "qwen2", seed: int = 0, *, tokenizer: Any = None,
                    **overrides: Any) -> Path:
    """Write a seeded random model of ``arch`` (shape ``overrides``) and a tokenizer (default
    SmolLM2's; or a tokenizer object or folder) to ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer is None:
        tok = load_tokenizer("smollm2-135m-instruct")
    elif isinstance(tokenizer, (str, Path)):
        tok = AutoTokenizer.from_pretrained(tokenizer)
    else:
        tok = tokenizer
    config = tiny_config(arch, vocab_size=len(tok), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.config.architectures = [type(model).__name__]
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def tiny_model_path(arch: str = "qwen2") -> str:
    """A cached tiny model folder (built on first use)."""
    target = cache_dir() / "models" / f"tiny-{arch}"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{arch}-", dir=target.parent))
        try:
            make_tiny_model(tmp, arch)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
