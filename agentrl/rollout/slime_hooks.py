"""slime-shaped hooks: ``async def generate(args, sample, sampling_params)`` and ``async def reward(args, sample)``.

slime's ``--custom-generate-function-path`` and ``--custom-rm-path`` take functions of another
contract than agentrl's (:mod:`agentrl.rollout.hooks`). A hook is recognised as slime-shaped by its
signature (a generate function of 3 positional parameters, a reward function of 2, the first named
``args``) and adapted here, so a slime user's hook file runs unchanged.

What maps:

=============================  =====================================================================
slime                          agentrl
=============================  =====================================================================
``sample.prompt``              the environment's opening messages (``reset`` with the row's seed and
                               options), rendered by the chat template with the generation prompt
                               (slime's ``--apply-chat-template``)
``sample.label``,              the row's label and metadata; ``index`` is the sample's index,
``sample.metadata``            ``group_index`` the group's
``sampling_params``            ``--rollout-temperature/-top-p/-top-k/-stop``, ``max_new_tokens`` =
                               ``--rollout-max-response-len``, the template's stop token ids
``args.sglang_router_ip/port`` an SGLang-compatible server (:mod:`agentrl.engine.server`) over the
                               run's engine, on a free loopback port, started on first use
``args.hf_checkpoint``         the tokenizer's path; ``args.rollout_*``, ``args.n_samples_per_prompt``,
                               ``args.max_turns`` from the run's settings; ``args.partial_rollout``
                               is False
``sample.tokens`` + ``response_length`` -> ``prompt_ids`` / ``response_ids``; ``loss_mask`` (all 1 when
                               unset); ``rollout_log_probs`` (0.0 when unset)
``sample.status``              COMPLETED -> ok, TRUNCATED -> truncated, ABORTED -> aborted, FAILED -> failed
``sample.reward``              the reward when the generate hook sets it; else ``--custom-rm-path``;
                               else the environment grades ``sample.response`` as the reply of one step
reward hook ``(args, sample)`` the agentrl sample seen as a slime one: ``prompt`` the opening messages'
                               text, ``response`` the text of every later message, ``label``,
                               ``metadata``, ``tokens``, ``loss_mask``; a number or a dict comes back
=============================  =====================================================================

What does not carry over: slime's ``Sample`` fields for multimodal inputs, partial rollouts
(``args.partial_rollout`` is always False), a generate hook that returns a list of samples, the
router's own endpoints beyond SGLang's ``/generate`` family, and every other slime flag (``args``
carries the names above and nothing else: reading another one raises ``AttributeError`` naming
them). A generate hook that returns no ``rollout_log_probs`` gets 0.0 for each token: training
then recomputes the log-probabilities as usual, but the rollout/train mismatch metrics and TIS are
meaningless; pass ``"return_logprob": True`` and keep ``meta_info["output_token_logprobs"]``.

When slime itself is not installed, ``slime.utils.types`` (``Sample``), ``slime.utils.http_utils``
(``post``) and ``slime.rollout.sglang_rollout`` (``GenerateState``) resolve to the small stand-ins
below, so the hook file's imports work; with slime installed, its own modules are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentrl.types import Sample


# -- slime's types, as stand-ins --------------------------------------------------------------------

@dataclass
class SlimeSample:
    """The fields of slime's ``Sample`` (``slime/utils/types.py``) that hooks read and write."""

    class Status(enum.Enum):
        PENDING = "pending"
        COMPLETED = "completed"
        TRUNCATED = "truncated"
        ABORTED = "aborted"
        FAILED = "failed"

    group_index: int | None = None
    index: int | None = None
    prompt: Any = ""
    tokens: list[int] = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    label: Any = None
    reward: Any = None
    loss_mask: list[int] | None = None
    weight_versions: list[str] = field(default_factory=list)
    rollout_log_probs: list[float] | None = None
    status: SlimeSample.Status = Status.PENDING
    metadata: dict[str, Any] = field(default_factory=dict)


class GenerateState:
    """slime's ``GenerateState(args)``: the tokenizer and the default sampling parameters of the run."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.tokenizer = args.agentrl_tokenizer
        self.sampling_params = dict(args.agentrl_sampling_params)
        self.semaphore = asyncio.Semaphore(max(1, int(getattr(args, "sglang_server_concurrency", 64))))


async def post(url: str, payload: dict[str, Any] | None = None, max_retries: int = 1, **_: Any) -> Any:
    """slime's ``post(url, payload)``: POST JSON, return the decoded answer (raises on an HTTP error)."""
    import httpx

    async with httpx.AsyncClient(timeout=None, trust_env=False) as client:
        response = await client.post(url, json=payload or {})
        response.raise_for_status()
        return response.json()


def install_stand_ins() -> bool:
    """Make ``import slime.utils.types`` and the two others resolve to the stand-ins above, unless slime is
    installed. Returns whether it installed them."""
    if "slime" in sys.modules or importlib.util.find_spec("slime") is not None:
        return False
    this = sys.modules[__name__]
    modules = {name: types.ModuleType(name) for name in (
        "slime", "slime.utils", "slime.utils.types", "slime.utils.http_utils", "slime.rollout",
        "slime.rollout.sglang_rollout")}
    modules["slime.utils.types"].Sample = SlimeSample  # type: ignore[attr-defined]
    modules["slime.utils.http_utils"].post = post  # type: ignore[attr-defined]
    modules["slime.rollout.sglang_rollout"].GenerateState = GenerateState  # type: ignore[attr-defined]
    for name, module in modules.items():
        module.__doc__ = f"agentrl's stand-in for {name} (slime is not installed; see {this.__name__})"
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
        sys.modules[name] = module
    return True


# -- recognising the shape --------------------------------------------------------------------------

def _positional(fn: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def is_slime_generate(fn: Callable[..., Any]) -> bool:
    """``async def generate(args, sample, sampling_params)``: three positional parameters, ``args`` first."""
    names = _positional(fn)
    return inspect.iscoroutinefunction(fn) and len(names) == 3 and names[0] == "args"


def is_slime_reward(fn: Callable[..., Any]) -> bool:
    """``async def reward(args, sample, **kwargs)``: two positional parameters, ``args`` first."""
    names = _positional(fn)
    return len(names) == 2 and names[0] == "args"


# -- the run's settings as slime's args -------------------------------------------------------------

class SlimeArgs(argparse.Namespace):
    """slime's ``args`` with the names agentrl can fill; any other name raises, listing these."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        known = sorted(k for k in vars(self) if not k.startswith("agentrl_"))
        raise AttributeError(f"slime's args.{name} has no agentrl counterpart; a slime-shaped hook gets {known}")


def slime_args(config: Any, template: Any, host: str, port: int) -> SlimeArgs:
    """``args`` for a slime hook from the rollout's settings (``config``: a RolloutConfig)."""
    sampling = config.sampling
    return SlimeArgs(
        sglang_router_ip=host, sglang_router_port=port, partial_rollout=False, apply_chat_template=True,
        hf_checkpoint=getattr(template.tokenizer, "name_or_path", None),
        rollout_max_response_len=config.max_new_tokens_per_turn, rollout_max_context_len=config.max_context_tokens,
        rollout_temperature=sampling.temperature, rollout_top_p=sampling.top_p, rollout_top_k=sampling.top_k,
        rollout_stop=list(sampling.stop), n_samples_per_prompt=config.n_samples_per_prompt,
        max_turns=config.max_turns, sglang_server_concurrency=config.concurrency,
        agentrl_tokenizer=template.tokenizer, agentrl_sampling_params=sampling_params(config, template))


def sampling_params(config: Any, template: Any) -> dict[str, Any]:
    """slime's ``sampling_params`` (SGLang's names) from the rollout's settings."""
    s = config.sampling
    return {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
            "max_new_tokens": config.max_new_tokens_per_turn, "stop": list(s.stop),
            "stop_token_ids": sorted(set(s.stop_token_ids) | set(template.stop_token_ids)),
            "skip_special_tokens": False, "no_stop_trim": True, "spaces_between_special_tokens": False}


# -- the adapters -----------------------------------------------------------------------------------

_STATUS = {"completed": "ok", "pending": "ok", "truncated": "truncated", "aborted": "aborted", "failed": "failed"}


def adapt_generate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An agentrl generate function (``run_episode``'s signature) that runs the slime-shaped ``fn``."""
    servers: dict[int, tuple[asyncio.AbstractEventLoop, Any, int]] = {}  # per engine: its loop, server, port

    async def router(engine: Any, template: Any) -> int:
        loop = asyncio.get_running_loop()
        served = servers.get(id(engine))
        if served is None or served[0] is not loop or served[0].is_closed():
            servers[id(engine)] = (loop, *await _serve(engine, template))
        return servers[id(engine)][2]

    async def generate(engine: Any, template: Any, request: Any, config: Any, *, reward_fn: Any = None) -> Sample:
        from agentrl.env import make

        env = make(request.env_id, max_turns=config.max_turns, **config.env_kwargs)
        try:
            messages, _ = await env.areset(seed=request.env_seed, options=request.options)
            tools = env.tool_schemas() or None
            args = slime_args(config, template, "127.0.0.1", await router(engine, template))
            slime = SlimeSample(group_index=request.group_id, index=request.sample_index, label=request.label,
                                prompt=template.render(messages, tools=tools, add_generation_prompt=True),
                                metadata=dict(request.metadata))
            out = await fn(args, slime, dict(args.agentrl_sampling_params))
            if not hasattr(out, "tokens") or not hasattr(out, "response_length"):
                raise TypeError(f"the slime-shaped generate function returned {type(out).__name__}, expected a Sample")
            sample = to_agentrl(out, template, request, messages)
            if reward_fn is None and getattr(out, "reward", None) is None and sample.status in ("ok", "truncated"):
                _, reward, *_ = await env.astep(out.response)
                sample.reward = float(reward)
        finally:
            env.close()
        if reward_fn is not None and sample.status in ("ok", "truncated"):
            from agentrl.rollout.episode import _apply_reward_fn

            await _apply_reward_fn(reward_fn, sample)
        return sample

    generate.__wrapped__ = fn  # type: ignore[attr-defined]
    return generate


def adapt_reward(fn: Callable[..., Any]) -> Callable[[Sample], Any]:
    """An agentrl reward function (``Sample -> float | dict``) that runs the slime-shaped ``fn``."""

    async def reward(sample: Sample) -> Any:
        value = fn(SlimeArgs(partial_rollout=False), to_slime(sample))
        if inspect.isawaitable(value):
            value = await value
        return value

    reward.__wrapped__ = fn  # type: ignore[attr-defined]
    return reward


def to_agentrl(out: Any, template: Any, request: Any, messages: list[dict[str, Any]]) -> Sample:
    """A slime sample that a generate hook returned, as agentrl's :class:`~agentrl.types.Sample`."""
    n = int(out.response_length)
    tokens = [int(t) for t in out.tokens]
    if n > len(tokens) or n < 0:
        raise ValueError(f"response_length {n} but only {len(tokens)} tokens")
    mask = [int(m) for m in out.loss_mask] if out.loss_mask is not None else [1] * n
    logprobs = [float(x) for x in out.rollout_log_probs] if out.rollout_log_probs else [0.0] * n
    logprobs = [lp if m else 0.0 for lp, m in zip(logprobs, mask)]
    status = getattr(out.status, "value", out.status)
    turns = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))  # runs of generated tokens
    reward = out.reward
    rewards = {k: float(v) for k, v in reward.items()} if isinstance(reward, dict) else {}
    scalar = rewards.get("reward", sum(rewards.values())) if rewards else float(reward or 0.0)
    return Sample(
        prompt_ids=tokens[:len(tokens) - n], response_ids=tokens[len(tokens) - n:], loss_mask=mask,
        rollout_logprobs=logprobs, reward=scalar, rewards=rewards, status=_STATUS.get(str(status).lower(), "ok"),
        group_id=request.group_id, sample_index=request.sample_index, env_id=request.env_id, label=request.label,
        messages=[*messages, {"role": "assistant", "content": out.response}], num_turns=turns,
        metrics={"generated_tokens": float(sum(mask)), "observation_tokens": float(n - sum(mask)), "turns": float(turns)},
        metadata={**request.metadata, "slime_metadata": _jsonable(out.metadata)})


def to_slime(sample: Sample) -> SlimeSample:
    """agentrl's sample as slime's, for a slime-shaped reward hook."""
    first = next((i for i, m in enumerate(sample.messages) if m.get("role") == "assistant"), len(sample.messages))
    text = [str(m.get("content") or "") for m in sample.messages]
    status = {"ok": "COMPLETED", "truncated": "TRUNCATED", "aborted": "ABORTED", "failed": "FAILED"}[sample.status]
    return SlimeSample(
        group_index=sample.group_id, index=sample.sample_index, prompt="\n".join(text[:first]),
        response="".join(text[first:]), tokens=[*sample.prompt_ids, *sample.response_ids],
        response_length=len(sample.response_ids), label=sample.label, loss_mask=list(sample.loss_mask),
        rollout_log_probs=list(sample.rollout_logprobs), status=SlimeSample.Status[status],
        metadata=dict(sample.metadata))


async def _serve(engine: Any, template: Any) -> tuple[Any, int]:
    """An SGLang-compatible server over ``engine`` on this event loop, on a free loopback port."""
    import uvicorn

    from agentrl.engine._server_run import listening_socket
    from agentrl.engine.server import create_app

    class _Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]  # the run owns Ctrl-C, not this server
            yield

    sock = listening_socket("127.0.0.1", 0)
    app = create_app(engine, template.tokenizer, model_path=str(getattr(template.tokenizer, "name_or_path", "model")))
    server = _Quiet(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the SGLang-compatible server for a slime-shaped hook stopped at start")
        await asyncio.sleep(0.01)
    return task, sock.getsockname()[1]


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)
