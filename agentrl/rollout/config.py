"""Settings of the rollout: episode budgets and sampling, the filters between rollout and trainer, user hooks,
and how rollouts overlap training. Imported without torch (``train.py --help`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from agentrl.engine.base import SamplingParams


@dataclass
class RolloutConfig:
    """Episodes: budgets and sampling."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--n-samples-per-prompt": "n_samples_per_prompt", "--max-turns": "max_turns",
        "--rollout-max-context-len": "max_context_tokens", "--rollout-max-response-len": "max_new_tokens_per_turn",
        "--rollout-temperature": "sampling.temperature", "--rollout-top-p": "sampling.top_p",
        "--rollout-top-k": "sampling.top_k", "--rollout-stop": "sampling.stop",
        "--rollout-concurrency": "concurrency", "--episode-timeout": "episode_timeout",
        "--max-episode-retries": "max_episode_retries", "--env-kwargs": "env_kwargs",
    }

    n_samples_per_prompt: int = 4
    """Episodes per prompt (a group); group-relative advantages compare them."""
    max_turns: int | None = None
    """Assistant turns per episode (None: the environment's registered limit)."""
    max_context_tokens: int = 4096
    """Prompt + response tokens per episode; reaching it truncates the episode."""
    max_new_tokens_per_turn: int = 1024
    """Generated tokens per assistant turn."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Temperature, top-p, top-k, stop strings, seed... (max_new_tokens is set per turn)."""
    concurrency: int = 64
    """Episodes in flight at once, across all groups."""
    episode_timeout: float | None = 600.0
    """Seconds before an episode is stopped and recorded as failed (none: no limit)."""
    max_episode_retries: int = 2
    """Times a failed episode (an environment, tool or engine error) is run again with the same seeds; one
    that still fails is left out of its group's statistics and of the batch (rollout/failed_excluded)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments for every environment made."""

    def problems(self) -> list[str]:
        out = [f"{flag} must be >= 1; got {value}" for flag, value in (
            ("--n-samples-per-prompt", self.n_samples_per_prompt), ("--rollout-max-context-len", self.max_context_tokens),
            ("--rollout-max-response-len", self.max_new_tokens_per_turn), ("--rollout-concurrency", self.concurrency),
            ("--max-turns", 1 if self.max_turns is None else self.max_turns)) if value is None or value < 1]
        if self.episode_timeout is not None and not self.episode_timeout > 0:
            out.append(f"--episode-timeout must be > 0 seconds (none: no limit); got {self.episode_timeout}")
        if self.max_episode_retries is None or self.max_episode_retries < 0:
            out.append(f"--max-episode-retries must be >= 0; got {self.max_episode_retries}")
        try:
            self.sampling.validate()
        except ValueError as e:
            out.append(f"sampling (--rollout-temperature/-top-p/-top-k): {e}")
        return out


@dataclass
class FilterConfig:
    """Filters: which groups of a rollout train."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--dynamic-sampling": "dynamic_sampling", "--over-sampling-factor": "over_sampling_factor",
        "--overlong": "overlong", "--overlong-penalty": "overlong_penalty",
    }

    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and over-sample prompts to refill the batch."""
    over_sampling_factor: float = 2.0
    """At most this many times --rollout-batch-size prompts per rollout when filters drop groups."""
    overlong: Literal["keep", "mask", "penalty"] = "keep"
    """Truncated episodes: keep, mask (no gradient), or penalty (reward := --overlong-penalty)."""
    overlong_penalty: float = -1.0
    """Reward of truncated episodes with --overlong penalty."""

    def problems(self) -> list[str]:
        if not self.over_sampling_factor >= 1:
            return [f"--over-sampling-factor must be >= 1; got {self.over_sampling_factor}"]
        return []


@dataclass
class HookConfig:
    """Hooks: user functions that replace part of the rollout (see agentrl.rollout.hooks)."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--custom-generate-function-path": "custom_generate_function_path", "--custom-rm-path": "custom_rm_path",
    }

    custom_generate_function_path: str | None = None
    """module:function or file.py:function replacing the episode loop (see agentrl.rollout.hooks)."""
    custom_rm_path: str | None = None
    """module:function or file.py:function scoring episodes, replacing the env reward."""

    def problems(self) -> list[str]:
        out = []
        for flag, spec in (("--custom-generate-function-path", self.custom_generate_function_path),
                           ("--custom-rm-path", self.custom_rm_path)):
            if spec is not None and ":" not in spec:
                out.append(f"{flag} {spec!r} must look like 'module:function' or 'file.py:function'")
            elif spec is not None:
                module = spec.rpartition(":")[0]
                if (module.endswith(".py") or "/" in module) and not Path(module).expanduser().exists():
                    out.append(f"{flag} {spec!r}: no such file {module}")
        return out


@dataclass
class AsyncConfig:
    """Asynchronous training: rollouts generated while the trainer trains (docs/scaling.md)."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--max-staleness": "max_staleness", "--partial-rollouts": "partial_rollouts",
        "--in-flight-weight-updates": "in_flight_weight_updates", "--next-rollout-at": "next_rollout_at",
        "--trainer-sms": "trainer_sms",
    }

    max_staleness: int = 0
    """Weight versions a sample may lag the trainer: 0 synchronous; 1 generates rollout k+1 while training on k
    (groups older than this are dropped)."""
    partial_rollouts: bool = True
    """With --max-staleness > 0: at a weight update, abort in-flight generations and continue them under the new
    weights, keeping their tokens and rollout logprobs (--use-tis corrects the stale part); off: the update waits
    until they finish."""
    in_flight_weight_updates: bool = False
    """With --max-staleness > 0 and the embedded engine: a weight update neither aborts nor waits for the turns in
    flight; the engine loads the weights between two decode steps and they go on, keeping their old-weight keys
    and values (nothing is prefilled again; --use-tis corrects the stale tokens)."""
    next_rollout_at: float = 0.0
    """With --max-staleness > 0: start a rollout once at most this fraction of the previous rollout's episodes are
    unfinished, and as the staleness bound allows. 0 (default): once the previous rollout's last episode is done,
    so rollouts generate one after another, each beside the training step before it. 1: as soon as the bound
    allows, so a rollout's episodes fill the slots the previous one's long tail leaves free; the two then tend to
    finish together and the engine idles while the first is trained (steps alternate long and short). On the
    long-tailed benchmark of docs/scaling.md 0 was as fast or faster with the engine on its own H100 and within
    noise of 1 on one H100."""
    trainer_sms: int | None = None
    """With --max-staleness > 0 and the embedded engine on the trainer's GPU: run the trainer's kernels on this many
    SMs (a CUDA green context) so the engine's decode steps, which overlap training, keep the rest (default: all)."""

    def problems(self) -> list[str]:
        out = []
        if self.max_staleness is None or self.max_staleness < 0:
            out.append(f"--max-staleness must be >= 0; got {self.max_staleness}")
        if not 0.0 <= self.next_rollout_at <= 1.0:
            out.append(f"--next-rollout-at is a fraction of a rollout's episodes, in [0, 1]; got {self.next_rollout_at}")
        if self.in_flight_weight_updates and self.max_staleness is not None and self.max_staleness < 1:
            out.append("--in-flight-weight-updates changes how a weight update meets the turns that overlap it: it "
                       "needs --max-staleness >= 1")
        if self.trainer_sms is not None:
            if self.trainer_sms < 1:
                out.append(f"--trainer-sms must be >= 1; got {self.trainer_sms}")
            elif self.max_staleness is not None and self.max_staleness < 1:
                out.append("--trainer-sms shares the GPU between training and the generation that overlaps it: it "
                           "needs --max-staleness >= 1")
        return out
