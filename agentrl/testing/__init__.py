"""Test doubles that ship with the library: a scripted engine, an echo environment and tiny models."""

from agentrl.testing.fake_engine import FakeEngine
from agentrl.testing.tiny import make_tiny_model, tiny_config, tiny_model_path

__all__ = ["FakeEngine", "make_tiny_model", "tiny_config", "tiny_model_path"]
