"""OpenAI-compatible chat completions in front of any engine, with token capture per episode.

* :mod:`~agentrl.openai.protocol`: request parsing and answer shapes (pure);
* :mod:`~agentrl.openai.capture`: the calls of one episode as token ids, segment by segment;
* :mod:`~agentrl.openai.service`: :class:`ChatService`, sampling with the engine, tool-call parsing;
* :mod:`~agentrl.openai.routes`: the HTTP routes (``agentrl serve`` has them);
* :mod:`~agentrl.openai.endpoint`: :class:`AgentEndpoint`, a server on the running event loop that
  an agent environment starts in front of the rollout's engine.

See ``docs/agents.md``.
"""

from agentrl.openai.capture import CallRecord, EpisodeCapture, Segment
from agentrl.openai.protocol import OpenAIError
from agentrl.openai.service import ChatService, SamplingPolicy

__all__ = ["CallRecord", "ChatService", "EpisodeCapture", "OpenAIError", "SamplingPolicy", "Segment"]
