"""Building the pieces a run needs from its :class:`~agentrl.config.RunConfig`.

Each builder does one thing; :mod:`agentrl.loop` calls them in order and then only moves data
between them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl import algo
from agentrl.config import ConfigError, RunConfig
from agentrl.data import PromptDataset, PromptSampler, load_prompts
from agentrl.eval import EvalConfig, EvalTask
from agentrl.rollout import Rollout, default_filters, load_generate_fn, load_reward_fn
from agentrl.rollout.async_partial import InterruptibleEngine
from agentrl.train.batch import RolloutBatch

log = logging.getLogger(__name__)


PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
)
"""``--no-apply-chat-template``: message contents one after another (for base models); an
assistant turn ends with the eos token, which the engine stops on."""


@dataclass
class Components:
    engine: Any
    trainer: Any
    template: Any
    rollout: Rollout
    sampler: PromptSampler
    dataset: PromptDataset
    eval_tasks: list[EvalTask]
    eval_config: EvalConfig
    interruptible: InterruptibleEngine | None = None
    """The rollout's engine when rollouts overlap training (``--max-staleness`` > 0): ``engine``
    wrapped so that weight syncs interrupt the turns in flight (``agentrl.async_loop``)."""


def build_components(cfg: RunConfig) -> Components:
    from agentrl.chat import ChatTemplate

    dataset = load_prompts(cfg.prompt_data, cfg.data)
    log.info("loaded %d prompts from %s (%d skipped)", len(dataset), cfg.prompt_data, len(dataset.skipped))
    sampler = PromptSampler(dataset.rows, seed=cfg.seed)
    eval_tasks = load_eval_tasks(cfg)
    trainer = build_trainer(cfg)
    template = ChatTemplate(trainer.tokenizer, None if cfg.data.apply_chat_template else PLAIN_TEMPLATE)
    engine = build_engine(cfg, trainer)
    interruptible = build_interruptible(cfg, engine)
    rollout = build_rollout(cfg, interruptible or engine, template)
    return Components(engine, trainer, template, rollout, sampler, dataset, eval_tasks, build_eval_config(cfg),
                      interruptible)


def build_interruptible(cfg: RunConfig, engine: Any, asynchronous: bool | None = None) -> InterruptibleEngine | None:
    """The engine of async runs' rollouts (``--max-staleness`` > 0, or ``asynchronous``), None otherwise:
    turns in flight at a weight sync resume (``--partial-rollouts``), finish first, or go on through it
    (``--in-flight-weight-updates``); see ``agentrl.rollout.async_partial``."""
    if not (cfg.max_staleness > 0 if asynchronous is None else asynchronous):
        return None
    return InterruptibleEngine(engine, resume=cfg.partial_rollouts, in_flight=cfg.in_flight_weight_updates)


def build_rollout(cfg: RunConfig, engine: Any, template: Any, generate_fn: Any = None) -> Rollout:
    """The rollout with the run's filters and hooks (``generate_fn`` overrides the configured one)."""
    if generate_fn is None and cfg.custom_generate_function_path:
        generate_fn = load_generate_fn(cfg.custom_generate_function_path)
    return Rollout(
        engine, template, cfg.rollout, default_env_id=cfg.env,
        filters=default_filters(dynamic_sampling=cfg.dynamic_sampling, overlong=cfg.overlong,
                                overlong_penalty_value=cfg.overlong_penalty),
        generate_fn=generate_fn,
        reward_fn=load_reward_fn(cfg.custom_rm_path) if cfg.custom_rm_path else None,
        seed=cfg.seed,
    )


def build_eval_config(cfg: RunConfig) -> EvalConfig:
    """Held-out evaluation settings: the training budgets, the eval temperature and sample count."""
    return EvalConfig(
        n_samples=cfg.n_samples_per_eval_prompt, ks=tuple(sorted({1, cfg.n_samples_per_eval_prompt})),
        sampling=cfg.rollout.sampling.replace(temperature=cfg.eval_temperature, seed=cfg.seed),
        max_turns=cfg.rollout.max_turns, max_context_tokens=cfg.rollout.max_context_tokens,
        max_new_tokens_per_turn=cfg.rollout.max_new_tokens_per_turn, concurrency=cfg.rollout.concurrency,
        env_kwargs=cfg.rollout.env_kwargs, seed=cfg.seed + 10_000)


def build_trainer(cfg: RunConfig) -> Any:
    total_steps = cfg.num_rollout * cfg.num_steps_per_rollout
    if cfg.trainer == "megatron":
        from agentrl.train.megatron import MegatronTrainer
        from agentrl.train.megatron.trainer import MegatronTrainerConfig

        megatron = MegatronTrainerConfig(attention=cfg.attention_backend, recompute=cfg.recompute_granularity,
                                         fusions=cfg.megatron_fusions)
        return MegatronTrainer(cfg.model_path, cfg.train, megatron, device=cfg.device, total_steps=total_steps)
    from agentrl.train.torch_trainer import TorchTrainer

    return TorchTrainer(cfg.model_path, cfg.train, device=cfg.device, total_steps=total_steps)


def build_engine(cfg: RunConfig, trainer: Any) -> Any:
    if cfg.engine == "sglang":
        from agentrl.engine.sglang import SGLangEngine, launch_sglang

        if cfg.sglang_url:
            return SGLangEngine(cfg.sglang_url)

        # servers (and a router in front of several) as subprocesses, shut down when the run exits
        cluster = launch_sglang(cfg.model_path, num_servers=cfg.num_engines, tp=cfg.rollout_num_gpus_per_engine,
                                extra_args=list(cfg.sglang_args))
        return cluster.engine()
    from agentrl.engine.embedded import EmbeddedEngine

    device = cfg.engine_device or str(trainer.device)
    return EmbeddedEngine(cfg.model_path, tokenizer=trainer.tokenizer, device=device,
                          max_batch_size=cfg.engine_max_batch_size, admit_wait_steps=cfg.engine_admit_wait_steps,
                          prefix_cache=cfg.engine_prefix_cache, pack_weights=cfg.engine_pack_weights,
                          dtype=cfg.engine_dtype,
                          high_priority_stream=cfg.engine_high_priority_stream,
                          max_seq_len=cfg.rollout.max_context_tokens + 8)


def load_eval_tasks(cfg: RunConfig) -> list[EvalTask]:
    """The held-out sets of ``--eval-prompt-data`` (none with ``--eval-interval 0``)."""
    if cfg.eval_interval == 0:
        return []
    tasks = []
    for name, path in zip(cfg.eval_prompt_data[::2], cfg.eval_prompt_data[1::2]):
        ds = load_prompts(path, cfg.data)
        rows = ds.rows[: cfg.eval_max_prompts] if cfg.eval_max_prompts else ds.rows
        tasks.append(EvalTask(name=name, rows=rows, env_id=cfg.env))
    return tasks


def compute_advantages(batch: RolloutBatch, cfg: RunConfig) -> None:
    """Fill ``batch.advantages`` (and ``batch.returns`` for gae) with the configured estimator.

    Per-turn rewards reach every estimator that can use them: ``gigpo`` and ``--turn-baseline`` get
    ``batch.turns``; the token-level ones (``gae``, ``reinforce_plus_plus``) get each turn's reward on
    the last token of that turn (with outcome-only rewards: the episode reward on its last token)."""
    name = cfg.advantage_estimator
    config = algo.AdvantageConfig(normalize_std=cfg.normalize_advantage_std, gamma=cfg.gamma, lam=cfg.lambd,
                                  turn_baseline=cfg.turn_baseline)
    estimator = algo.get_advantage_estimator(name)
    kwargs: dict[str, Any] = {}
    if name in algo.TURN_ESTIMATORS or cfg.turn_baseline:
        kwargs["turns"] = batch.turns
    elif name in ("gae", "reinforce_plus_plus") and batch.turns is not None:
        kwargs["token_rewards"] = algo.turn_token_rewards(batch.turns, batch.loss_mask)
    if name in algo.CRITIC_ESTIMATORS:
        token_rewards = kwargs.get("token_rewards")
        if token_rewards is None:
            token_rewards = algo.place_rewards_at_turn_ends(batch.rewards, batch.loss_mask)
        _, batch.returns = algo.compute_gae(token_rewards, batch.values, batch.loss_mask, cfg.gamma, cfg.lambd)
        kwargs["values"] = batch.values
    batch.advantages = estimator(batch.rewards, batch.group_ids, batch.loss_mask, config=config, **kwargs)


def output_dir(cfg: RunConfig) -> Path:
    """Create ``--output-dir`` (and the ``--save`` folder) now, before anything loads: a path that cannot be
    created is a :class:`~agentrl.config.ConfigError`, not a failure after the first rollouts."""
    problems = []
    for flag, folder in (("--output-dir", cfg.output_dir), ("--save", cfg.save)):
        if folder:
            try:
                Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
            except OSError as e:
                problems.append(f"{flag} {folder}: cannot create it ({e.strerror or e})")
    if problems:
        raise ConfigError(problems)
    return Path(cfg.output_dir).expanduser()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
