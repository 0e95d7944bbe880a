"""Prompt data: loading rows from files or the hub, and seeded resumable sampling."""

from agentrl.data.prompts import DataConfig, DataError, PromptDataset, PromptRow, load_prompts
from agentrl.data.sampler import PromptSampler

__all__ = ["DataConfig", "DataError", "PromptDataset", "PromptRow", "PromptSampler", "load_prompts"]
