"""Building the pieces a run needs from its :class:`~agentrl.config.RunConfig`.

Each builder does one thing; :mod:`agentrl.loop` calls them in order and then only moves data
between them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl import algo
from agentrl.config import ConfigError, RunConfig
from agentrl.data import PromptDataset, PromptSampler, load_prompts
from agentrl.data.curriculum import CurriculumSampler
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
    sampler: PromptSampler | CurriculumSampler
    """The training rows' order (wrapped by a curriculum when the run has one)."""
    dataset: PromptDataset
    eval_tasks: list[EvalTask]
    eval_config: EvalConfig
    interruptible: InterruptibleEngine | None = None
    """The rollout's engine when rollouts overlap training (``--max-staleness`` > 0): ``engine``
    wrapped so that weight syncs interrupt the turns in flight (``agentrl.async_loop``)."""


def build_components(cfg: RunConfig) -> Components:
    if cfg.prompt_data is None:
        raise ConfigError(["--prompt-data is required (a .jsonl/.parquet file of prompts)"])
    dataset = load_prompts(cfg.prompt_data, cfg.data)
    log.info("loaded %d prompts from %s (%d skipped)", len(dataset), cfg.prompt_data, len(dataset.skipped))
    sampler = PromptSampler(dataset.rows, seed=cfg.seed)
    eval_tasks = load_eval_tasks(cfg)
    if not cfg.hooks.custom_generate_function_path:  # a custom episode loop may make no environment at all
        check_envs(cfg, [*dataset.rows, *(row for task in eval_tasks for row in task.rows)])
    generate_fn, reward_fn = load_hooks(cfg)  # a hook that cannot be loaded stops the run before the model loads
    trainer = build_trainer(cfg)
    template = build_template(cfg, trainer.tokenizer)
    engine = build_engine(cfg, trainer)
    interruptible = build_interruptible(cfg, engine)
    rollout = build_rollout(cfg, interruptible or engine, template, generate_fn, reward_fn)
    return Components(engine, trainer, template, rollout, sampler, dataset, eval_tasks, build_eval_config(cfg),
                      interruptible)


def build_interruptible(cfg: RunConfig, engine: Any, asynchronous: bool | None = None) -> InterruptibleEngine | None:
    """The engine of async runs' rollouts (``--max-staleness`` > 0, or ``asynchronous``), None otherwise:
    turns in flight at a weight sync resume (``--partial-rollouts``), finish first, or go on through it
    (``--in-flight-weight-updates``); see ``agentrl.rollout.async_partial``."""
    if not (cfg.asynchrony.max_staleness > 0 if asynchronous is None else asynchronous):
        return None
    return InterruptibleEngine(engine, resume=cfg.asynchrony.partial_rollouts, in_flight=cfg.asynchrony.in_flight_weight_updates)


def build_template(cfg: RunConfig, tokenizer: Any) -> Any:
    """The run's chat template: ``--chat-template``, else the tokenizer's (or the plain one with
    ``--no-apply-chat-template``); one that cannot keep tokens exact is refused unless ``--allow-non-incremental``."""
    from agentrl.chat import ChatTemplate

    source = cfg.chat_template or (None if cfg.data.apply_chat_template else PLAIN_TEMPLATE)
    template = ChatTemplate(tokenizer, source, allow_non_incremental=cfg.allow_non_incremental)
    check_template(cfg, template)
    return template


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

    first: dict[str | None, Any] = {}
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


def load_hooks(cfg: RunConfig) -> tuple[Any, Any]:
    """The run's ``--custom-generate-function-path`` and ``--custom-rm-path`` functions (None where not given);
    a :class:`~agentrl.utils.imports.HookLoadError` names the one that cannot be imported or has the wrong shape."""
    hooks = cfg.hooks
    return (load_generate_fn(hooks.custom_generate_function_path) if hooks.custom_generate_function_path else None,
            load_reward_fn(hooks.custom_rm_path) if hooks.custom_rm_path else None)


def build_rollout(cfg: RunConfig, engine: Any, template: Any, generate_fn: Any = None, reward_fn: Any = None) -> Rollout:
    """The rollout with the run's filters and hooks (``generate_fn`` / ``reward_fn``, already loaded, stand for the
    configured ones)."""
    hooks = cfg.hooks
    if generate_fn is None and hooks.custom_generate_function_path:
        generate_fn = load_generate_fn(hooks.custom_generate_function_path)
    if reward_fn is None and hooks.custom_rm_path:
        reward_fn = load_reward_fn(hooks.custom_rm_path)
    return Rollout(
        engine, template, cfg.rollout, default_env_id=cfg.env,
        filters=default_filters(dynamic_sampling=cfg.filters.dynamic_sampling, overlong=cfg.filters.overlong,
                                overlong_penalty_value=cfg.filters.overlong_penalty),
        generate_fn=generate_fn, reward_fn=reward_fn, seed=cfg.seed,
    )


def build_eval_config(cfg: RunConfig) -> EvalConfig:
    """Held-out evaluation settings: the training budgets and episode timeout, the eval temperature and sample count."""
    return EvalConfig(
        n_samples=cfg.eval.n_samples_per_eval_prompt, ks=tuple(sorted({1, cfg.eval.n_samples_per_eval_prompt})),
        sampling=cfg.rollout.sampling.replace(temperature=cfg.eval.eval_temperature, seed=cfg.seed),
        max_turns=cfg.rollout.max_turns, max_context_tokens=cfg.rollout.max_context_tokens,
        max_new_tokens_per_turn=cfg.rollout.max_new_tokens_per_turn, concurrency=cfg.rollout.concurrency,
        episode_timeout=cfg.rollout.episode_timeout, env_kwargs=cfg.rollout.env_kwargs,
        seed=cfg.seed + HELDOUT_SEED_OFFSET)


def build_trainer(cfg: RunConfig) -> Any:
    total_steps = cfg.num_rollout * cfg.num_steps_per_rollout
    if cfg.trainer == "megatron":
        from agentrl.train.megatron import MegatronTrainer

        return MegatronTrainer(cfg.model_path, cfg.train, cfg.megatron, device=cfg.device, total_steps=total_steps)
    from agentrl.train.torch_trainer import TorchTrainer

    return TorchTrainer(cfg.model_path, cfg.train, device=cfg.device, total_steps=total_steps)


def engine_config(cfg: RunConfig) -> Any:
    """The embedded engine's settings for this run: ``--engine-*`` as given, the sequence length from the rollout's
    context budget unless given."""
    return dataclasses.replace(cfg.engine.embedded,
                               max_seq_len=cfg.engine.embedded.max_seq_len or cfg.rollout.max_context_tokens + 8)


def build_engine(cfg: RunConfig, trainer: Any) -> Any:
    if cfg.engine.kind == "sglang":
        from agentrl.engine.sglang import SGLangEngine, launch_sglang

        if cfg.engine.sglang_url:
            return SGLangEngine(cfg.engine.sglang_url)

        # servers (and a router in front of several) as subprocesses, shut down when the run exits
        cluster = launch_sglang(cfg.model_path, num_servers=cfg.cluster.num_engines,
                                tp=cfg.cluster.rollout_num_gpus_per_engine, extra_args=list(cfg.engine.sglang_args))
        return cluster.engine()
    from agentrl.engine.embedded import EmbeddedEngine

    return EmbeddedEngine(cfg.model_path, tokenizer=trainer.tokenizer, device=cfg.engine.device or str(trainer.device),
                          dtype=cfg.engine.dtype, config=engine_config(cfg))


def load_eval_tasks(cfg: RunConfig) -> list[EvalTask]:
    """The held-out sets of ``--eval-prompt-data`` (none with ``--eval-interval 0``)."""
    if cfg.eval.eval_interval == 0:
        return []
    tasks = []
    for name, path in cfg.eval.sets:
        ds = load_prompts(path, cfg.data)
        rows = ds.rows[: cfg.eval.eval_max_prompts] if cfg.eval.eval_max_prompts else ds.rows
        tasks.append(EvalTask(name=name, rows=rows, env_id=cfg.env))
    return tasks


def compute_advantages(batch: RolloutBatch, cfg: RunConfig) -> None:
    """Fill ``batch.advantages`` (and ``batch.returns`` for gae) with the configured estimator.

    Per-turn rewards reach every estimator that can use them: ``gigpo`` and ``--turn-baseline`` get
    ``batch.turns``; the token-level ones (``gae``, ``reinforce_plus_plus``) get each turn's reward on
    the last token of that turn (with outcome-only rewards: the episode reward on its last token)."""
    a = cfg.algo
    name = a.advantage_estimator
    config = algo.AdvantageConfig(normalize_std=a.normalize_advantage_std, gamma=a.gamma, lam=a.lambd,
                                  turn_baseline=a.turn_baseline)
    estimator = algo.get_advantage_estimator(name)
    kwargs: dict[str, Any] = {}
    if name in algo.TURN_ESTIMATORS or a.turn_baseline:
        kwargs["turns"] = batch.turns
    elif name in ("gae", "reinforce_plus_plus") and batch.turns is not None:
        kwargs["token_rewards"] = algo.turn_token_rewards(batch.turns, batch.loss_mask)
    if name in algo.CRITIC_ESTIMATORS:
        if batch.values is None:
            raise ValueError(f"{name} needs the critic's values in batch.values")
        token_rewards = kwargs.get("token_rewards")
        if token_rewards is None:
            token_rewards = algo.place_rewards_at_turn_ends(batch.rewards, batch.loss_mask)
        _, batch.returns = algo.compute_gae(token_rewards, batch.values, batch.loss_mask, a.gamma, a.lambd)
        kwargs["values"] = batch.values
    batch.advantages = estimator(batch.rewards, batch.group_ids, batch.loss_mask, config=config, **kwargs)


RUN_FILES = ("metrics.jsonl", "summary.json", "config.json", "training.png", "timing.png", "eval.png")
"""What a run writes into ``--output-dir`` besides the ``tensorboard/``, ``weights/`` and ``rollout_data/`` folders."""


def output_dir(cfg: RunConfig) -> Path:
    """Create ``--output-dir`` (and the ``--save`` folder) now, before anything loads: a path that cannot be
    created is a :class:`~agentrl.config.ConfigError`, not a failure after the first rollouts."""
    problems = []
    for flag, folder in (("--output-dir", cfg.output.output_dir), ("--save", cfg.checkpoint.save)):
        if folder:
            try:
                Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
            except OSError as e:
                problems.append(f"{flag} {folder}: cannot create it ({e.strerror or e})")
    if problems:
        raise ConfigError(problems)
    return Path(cfg.output.output_dir).expanduser()


def clear_earlier_run(cfg: RunConfig) -> None:
    """``--overwrite`` (without ``--load``): delete what an earlier run wrote to ``--output-dir`` and its checkpoints
    in ``--save``, and nothing else in those folders."""
    if not cfg.output.overwrite or cfg.checkpoint.load:
        return
    import shutil

    from agentrl.checkpoint import delete_checkpoints

    out = Path(cfg.output.output_dir).expanduser()
    removed = [name for name in RUN_FILES if (out / name).is_file()]
    for name in removed:
        (out / name).unlink()
    for folder in ("tensorboard", "weights", "rollout_data"):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
            removed.append(folder + "/")
    checkpoints = delete_checkpoints(cfg.checkpoint.save) if cfg.checkpoint.save and Path(cfg.checkpoint.save).expanduser().is_dir() else 0
    if removed or checkpoints:
        log.info("--overwrite: deleted the earlier run in %s (%s) and %d checkpoint(s)", out,
                 ", ".join(removed) or "no files", checkpoints)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
