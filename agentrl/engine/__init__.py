"""Inference engines behind one protocol: embedded (in-process HF model), SGLang client, fakes."""

from agentrl.engine.base import Completion, Engine, EngineError, SamplingParams, request_priority

__all__ = ["Completion", "Engine", "EngineError", "SamplingParams", "request_priority"]
