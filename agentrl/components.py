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
from agentrl.eval.runner import HELDOUT_SEED_OFFSET
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
    check_envs(cfg, [*dataset.rows, *(row for task in eval_tasks for row in task.rows)])
    trainer = build_trainer(cfg)
    template = ChatTemplate(trainer.tokenizer, None if cfg.data.apply_chat_template else PLAIN_TEMPLATE)
    check_template(cfg, template)
    engine = build_engine(cfg, trainer)
    interruptible = build_interruptible(cfg, engine)
    rollout = build_rollout(cfg, interruptible or engine, template)
    return Components(engine, trainer, template, rollout, sampler, dataset, eval_tasks, build_eval_config(cfg),
                      interruptible)


def build_interruptible(cfg: RunConfig, engine: Any) -> InterruptibleEngine | None:
    """The engine of async runs' rollouts (``--max-staleness`` > 0), None otherwise: turns in
    flight at a weight sync resume (``--partial-rollouts``), finish first, or go on through it
    (``--in-flight-weight-updates``); see ``agentrl.rollout.async_partial``."""
    if cfg.max_staleness <= 0:
        return None
    return InterruptibleEngine(engine, resume=cfg.partial_rollouts, in_flight=cfg.in_flight_weight_updates)


def check_template(cfg: RunConfig, template: Any) -> None:
    """A chat template that cannot keep tokens exact would fail every episode: refuse it before the first rollout."""
    from agentrl.chat import check_incremental
    from agentrl.chat.incremental import TemplateNotIncrementalError

    try:
        check_incremental(template)
    except TemplateNotIncrementalError as e:
        if not template.allow_non_incremental:
            raise ConfigError([f"the chat template of --model-path {cfg.model_path}: {e}"]) from None


def check_envs(cfg: RunConfig, rows: list[Any]) -> None:
    """Start one episode of each environment the rows use (made and reset on the first row that uses it) before
    the model loads: an environment that cannot be created (a missing optional dependency, bad --env-kwargs) or
    cannot read the rows (a missing prompt or label key) is a configuration problem, not a failure of every
    episode."""
    from concurrent.futures import ThreadPoolExecutor

    from agentrl.utils.extras import MissingExtra

    first: dict[str, Any] = {}
    for row in rows:
        first.setdefault(row.env_id or cfg.env, row)
    problems = []
    for env_id, row in sorted((k, v) for k, v in first.items() if k):
        try:
            with ThreadPoolExecutor(1) as pool:  # a sync reset runs outside the caller's event loop
                pool.submit(_start_episode, env_id, row, cfg.rollout.env_kwargs).result()
        except MissingExtra:
            raise
        except Exception as e:  # noqa: BLE001 -- whatever it is, no episode of this environment can run
            kwargs = f" with --env-kwargs {cfg.rollout.env_kwargs}" if cfg.rollout.env_kwargs else ""
            problems.append(f"environment {env_id}{kwargs} cannot start an episode of {row.source or 'its rows'}: "
                            f"{type(e).__name__}: {e}")
    if problems:
        raise ConfigError(problems)


def _start_episode(env_id: str, row: Any, env_kwargs: dict[str, Any]) -> None:
    from agentrl.env.registry import make

    env = make(env_id, **env_kwargs)
    try:
        options = row.reset_options()
        options.pop("seed", None)
        env.reset(seed=0, options=options)
    finally:
        env.close()


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
        env_kwargs=cfg.rollout.env_kwargs, seed=cfg.seed + HELDOUT_SEED_OFFSET)


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
    """Fill ``batch.advantages`` (and ``batch.returns`` for gae) with the configured estimator."""
    config = algo.AdvantageConfig(normalize_std=cfg.normalize_advantage_std, gamma=cfg.gamma, lam=cfg.lambd)
    estimator = algo.get_advantage_estimator(cfg.advantage_estimator)
    if cfg.advantage_estimator in algo.CRITIC_ESTIMATORS:
        token_rewards = algo.place_rewards_at_turn_ends(batch.rewards, batch.loss_mask)
        _, batch.returns = algo.compute_gae(token_rewards, batch.values, batch.loss_mask, cfg.gamma, cfg.lambd)
        batch.advantages = estimator(batch.rewards, batch.group_ids, batch.loss_mask, config=config,
                                     values=batch.values)
    else:
        batch.advantages = estimator(batch.rewards, batch.group_ids, batch.loss_mask, config=config)


RUN_FILES = ("metrics.jsonl", "summary.json", "config.json", "training.png", "timing.png", "eval.png")
"""What a run writes into ``--output-dir`` besides the ``tensorboard/``, ``weights/`` and ``rollout_data/`` folders."""


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


def clear_earlier_run(cfg: RunConfig) -> None:
    """``--overwrite`` (without ``--load``): delete what an earlier run wrote to ``--output-dir`` and its checkpoints
    in ``--save``, and nothing else in those folders."""
    if not cfg.overwrite or cfg.load:
        return
    import shutil

    from agentrl.checkpoint import delete_checkpoints

    out = Path(cfg.output_dir).expanduser()
    removed = [name for name in RUN_FILES if (out / name).is_file()]
    for name in removed:
        (out / name).unlink()
    for folder in ("tensorboard", "weights", "rollout_data"):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
            removed.append(folder + "/")
    checkpoints = delete_checkpoints(cfg.save) if cfg.save and Path(cfg.save).expanduser().is_dir() else 0
    if removed or checkpoints:
        log.info("--overwrite: deleted the earlier run in %s (%s) and %d checkpoint(s)", out,
                 ", ".join(removed) or "no files", checkpoints)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
