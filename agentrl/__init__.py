"""agentrl: agentic multi-turn reinforcement learning for LLMs, centred on environments."""

__version__ = "0.1.0"
