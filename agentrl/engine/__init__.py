"""Inference engines behind one protocol: embedded (in-process HF model), SGLang client, fakes."""

from agentrl.engine.base import (
    Closable,
    Completion,
    Engine,
    EngineError,
    LoadsWeightsFromDisk,
    OnDevice,
    ReleasesMemory,
    ReportsMetrics,
    SamplingParams,
    request_priority,
)

__all__ = ["Closable", "Completion", "Engine", "EngineError", "LoadsWeightsFromDisk", "OnDevice", "ReleasesMemory",
           "ReportsMetrics", "SamplingParams", "request_priority"]
