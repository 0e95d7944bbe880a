"""``agentrl eval`` as a training run evaluated: its held-out sets with the settings that decide their episodes.

A training config comes from ``--config`` (a recipe ``.yaml``, a run's ``config.json``, or a
checkpoint folder) or, with neither ``--config`` nor a task given, from the checkpoint that
``--model-path`` names (``CKPT``, ``CKPT/model`` or a ``--save`` folder, whose latest checkpoint is
taken). From it come the tasks (``--eval-prompt-data``, read with the run's data keys), the
environment and its arguments (``--env``, ``--env-kwargs``: a recipe's prompt template and answer
grading), whether the chat template is applied, the turn and token budgets, the eval temperature,
the samples per prompt, the prompt limit and the seeds, so a checkpoint scores here as it scored in
training. Flags given on the command line override any of them.

Example::

    >>> from agentrl.eval.cli import parse_args
    >>> args, cfg = resolve(parse_args(["--config", "recipes/quickstart/config.yaml", "--eval-max-prompts", "5"]))
    >>> args.max_response_len, args.limit, args.model_path, cfg.rollout.env_kwargs["fallback_last_number"]
    (32, 5, 'smollm2-135m-instruct', True)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrl.checkpoint import CheckpointError, find_checkpoint, read_state
from agentrl.config import ConfigError, RunConfig, from_mapping, parse_args

if TYPE_CHECKING:
    from agentrl.eval.cli import EvalArgs

log = logging.getLogger(__name__)

FROM_TRAINING: dict[str, Any] = {
    "n_samples": lambda c: c.eval.n_samples_per_eval_prompt,
    "k": lambda c: ",".join(str(k) for k in sorted({1, c.eval.n_samples_per_eval_prompt})),
    "temperature": lambda c: c.eval.eval_temperature,
    "top_p": lambda c: c.rollout.sampling.top_p,
    "top_k": lambda c: c.rollout.sampling.top_k,
    "stop": lambda c: list(c.rollout.sampling.stop),
    "max_response_len": lambda c: c.rollout.max_new_tokens_per_turn,
    "max_context_len": lambda c: c.rollout.max_context_tokens,
    "max_turns": lambda c: c.rollout.max_turns,
    "seed": lambda c: c.seed,
    "limit": lambda c: c.eval.eval_max_prompts,
    "episode_timeout": lambda c: c.rollout.episode_timeout,
}
"""``agentrl eval`` setting -> its value in a training config (as the run's own evaluation used it)."""


def checkpoint_of(model_path: str | None) -> Path | None:
    """The checkpoint folder ``model_path`` names (``CKPT``, ``CKPT/model``, or a ``--save`` folder), if any."""
    if not model_path:
        return None
    path = Path(model_path).expanduser()
    if path.name == "model" and (path.parent / "state.json").is_file():
        return path.parent
    if path.is_dir():
        try:
            return find_checkpoint(path)
        except FileNotFoundError:  # a model folder, not a checkpoint
            return None
    return None


def training_config(source: str | Path) -> RunConfig:
    """The training config in a recipe ``.yaml``, a run's ``config.json`` or a checkpoint folder."""
    path = Path(source).expanduser()
    ckpt = checkpoint_of(str(path)) if path.is_dir() else None
    if ckpt is not None:
        try:
            state = read_state(ckpt)
        except CheckpointError as e:
            raise ConfigError([str(e)]) from None
        return from_mapping(state.get("config", {}), f"{ckpt / 'state.json'}")
    if path.is_dir():
        raise ConfigError([f"--config {source}: a folder, but not a checkpoint (no state.json or 'latest')"])
    return parse_args(["--config", str(path)])


def resolve(args: EvalArgs) -> tuple[EvalArgs, RunConfig | None]:
    """``args`` with the training config's settings filled in where no flag set them, and that config (None
    when there is none: tasks come from ``--task``/``--tasks`` alone)."""
    ckpt = checkpoint_of(args.model_path)
    if ckpt is not None:  # the engine loads the checkpoint's HF folder
        args = dataclasses.replace(args, model_path=str(ckpt / "model"))
    source: str | Path | None = args.config
    if source is None and ckpt is not None and not (args.task or args.tasks):
        source = ckpt
        log.info("evaluating as training did: held-out sets and settings from %s (give --task to choose others)",
                 ckpt / "state.json")
    if source is None:
        return args, None
    cfg = training_config(source)
    changes = {name: get(cfg) for name, get in FROM_TRAINING.items() if name not in args.explicit}
    if args.model_path is None and not args.engine_url:
        changes["model_path"] = cfg.model_path
    if not (args.task or args.tasks) and not cfg.eval.eval_prompt_data:
        raise ConfigError([f"--config {source}: the training config names no held-out sets (eval-prompt-data); "
                           "give --task NAME=ENV_ID[:DATA_FILE]"])
    return dataclasses.replace(args, **changes), cfg


def heldout_tasks(cfg: RunConfig, limit: int | None) -> list[Any]:
    """The training config's held-out sets, read exactly as its training run read them."""
    from agentrl.components import load_eval_tasks

    return load_eval_tasks(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, eval_interval=None,
                                                                               eval_max_prompts=limit)))


def task_settings(cfg: RunConfig, tasks: list[Any]) -> list[dict[str, Any]]:
    """What identifies the held-out sets in ``run.json`` (a changed data file is a changed run)."""
    from agentrl.eval.tasks import TaskSpec, data_fingerprint

    paths = dict(cfg.eval.sets)
    out = []
    for task in tasks:
        spec = TaskSpec(name=task.name, env=cfg.env or "", data=paths[task.name])
        out.append({"name": task.name, "data": paths[task.name], "env": task.env_id,
                    "env_kwargs": json.loads(json.dumps(cfg.rollout.env_kwargs)),
                    "data_keys": dataclasses.asdict(cfg.data), "prompts": len(task.rows),
                    "data_sha256": data_fingerprint(spec)})
    return out
