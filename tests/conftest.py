"""Fixtures shared by the test folders: SmolLM2's tokenizer (through the tiny-qwen2 alias) and its chat template.

Without a GPU, Triton kernels (the CUDA decode attention) run in Triton's CPU interpreter; the
variable must be set before they are defined, i.e. before agentrl's engine is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from agentrl.chat import ChatTemplate  # noqa: E402
from agentrl.models import load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny-qwen2")


@pytest.fixture(scope="session")
def template(tokenizer):
    return ChatTemplate(tokenizer)
