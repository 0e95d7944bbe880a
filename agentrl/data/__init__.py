"""Prompt data: loading rows from files or the hub, and seeded resumable sampling."""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.data.prompts import DataConfig, DataError, PromptDataset, PromptRow, load_prompts
    from agentrl.data.sampler import PromptSampler

MODULES = {".prompts": ["DataConfig", "DataError", "PromptDataset", "PromptRow", "load_prompts"],
           ".sampler": ["PromptSampler"]}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
