"""The run configuration: typed dataclasses owned by each subsystem, one command line.

:class:`RunConfig` holds the loop's own settings and the subsystems' configs
(``data: DataConfig``, ``rollout: RolloutConfig``, ``train: TrainConfig``). Flags use slime's
names where the concept is the same (``--rollout-batch-size``, ``--n-samples-per-prompt``,
``--eps-clip-high``...). Each flag's help text is the docstring of the field it sets, so
``--help`` and the code cannot drift apart.

``--config recipe.yaml`` sets defaults from a file (keys are flag names, dashes or
underscores); flags on the command line override it. :func:`validate` checks everything that
can be checked before a model or a dataset is loaded and reports all problems at once.

Example::

    >>> cfg = parse_args(["--env", "Echo-v0", "--prompt-data", "x.jsonl", "--rollout-batch-size", "4"])
    >>> cfg.rollout_batch_size, cfg.rollout.n_samples_per_prompt, cfg.global_batch_size
    (4, 4, 16)
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.data.prompts import DataConfig
from agentrl.rollout.episode import RolloutConfig
from agentrl.train.base import TrainConfig


class ConfigError(ValueError):
    """One or more configuration problems, each with how to fix it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class RunConfig:
    """Settings of a training run (the loop's own; subsystems own theirs)."""

    model_path: str = "smollm2-135m-instruct"
    """HF model folder, hub id, or alias (smollm2-135m-instruct, tiny-qwen2, ...)."""
    env: str | None = None
    """Environment id for rows that name none (e.g. agentrl/Math-v0)."""
    prompt_data: str | None = None
    """Training prompts: .jsonl/.json/.parquet, a folder, or hf:org/name[:config][@split]."""
    num_rollout: int = 10
    """Rollouts (generate -> train -> sync iterations) to run."""
    rollout_batch_size: int = 8
    """Prompts per rollout (each expands to n_samples_per_prompt episodes)."""
    global_batch_size: int | None = None
    """Episodes per optimiser step (default: all episodes of a rollout / num_steps_per_rollout)."""
    num_steps_per_rollout: int = 1
    """Optimiser steps per rollout."""
    advantage_estimator: str = "grpo"
    """grpo | dr_grpo | rloo | reinforce_plus_plus | reinforce_plus_plus_baseline | gae | gigpo (turn-level
    credit from states the episodes of a group share; the environment names them, info["state_key"])."""
    normalize_advantage_std: bool = True
    """Divide group-relative advantages by the group std (off: Dr. GRPO)."""
    turn_baseline: bool = False
    """grpo, dr_grpo, rloo: each turn's return (its reward and the later ones) against the group's returns at the
    same turn, instead of the episode reward against the group's (unbiased; docs/training.md)."""
    gamma: float = 1.0
    """Discount: per token for gae and reinforce_plus_plus, per turn for gigpo (the paper uses 0.95) and
    --turn-baseline."""
    lambd: float = 1.0
    """GAE lambda."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and over-sample prompts to refill the batch."""
    over_sampling_factor: float = 2.0
    """At most this many times rollout_batch_size prompts per rollout when filters drop groups."""
    overlong: str = "keep"
    """Truncated episodes: keep | mask (no gradient) | penalty (reward := overlong_penalty)."""
    overlong_penalty: float = -1.0
    """Reward of truncated episodes with --overlong penalty."""
    trainer: str = "torch"
    """torch | megatron."""
    attention_backend: str = "auto"
    """--trainer megatron: layer spec, auto (Transformer Engine if installed, else sdpa) | te | sdpa | local."""
    recompute_granularity: str | None = None
    """--trainer megatron: activation recompute, none | full | selective (default: full with
    --gradient-checkpointing, else none)."""
    megatron_fusions: bool = False
    """--trainer megatron: compiled SwiGLU, bias-dropout-add and RMSNorm kernels (faster; compiles on first use)."""
    engine: str = "embedded"
    """embedded (in-process) | sglang (servers given by --sglang-url or launched)."""
    colocate: bool = True
    """Engine and trainer share devices; the engine frees its KV cache while training."""
    sglang_url: list[str] = field(default_factory=list)
    """SGLang server or router URLs (with --engine sglang); none: launch servers."""
    sglang_args: list[str] = field(default_factory=list)
    """--sglang-* flags, passed through to sglang.launch_server without the prefix."""
    engine_max_batch_size: int = 64
    """Embedded engine: sequences decoded together."""
    engine_prefix_cache: bool | None = None
    """Embedded engine: reuse the keys/values of a finished turn for the next turn's shared prefix
    (default: on for CUDA; off on the CPU, where runs then repeat bit for bit)."""
    engine_pack_weights: bool | None = None
    """Embedded engine on the CPU: keep a oneDNN-packed copy of the weights (faster matmuls, one more
    copy of the weights in memory; default: on)."""
    engine_admit_wait_steps: int | None = None
    """Embedded engine: decode steps a new request may wait so that several share one prefill
    (0: at once; default: 8 on CUDA, 0 on the CPU)."""
    engine_high_priority_stream: bool = False
    """Embedded engine on CUDA: run on a stream of the highest priority, ahead of a trainer sharing the GPU."""
    engine_dtype: str | None = None
    """Embedded engine: float32 | bfloat16 | float16 (default: float32 on the CPU, bfloat16 on CUDA).
    bfloat16 on a CPU with AVX-512 BF16 or AMX generates ~1.6x faster than float32; rollout logprobs
    then differ from a float32 trainer's by more (add --use-tis)."""
    custom_generate_function_path: str | None = None
    """module:function or file.py:function replacing the episode loop (see agentrl.rollout.hooks)."""
    custom_rm_path: str | None = None
    """module:function or file.py:function scoring episodes, replacing the env reward."""
    eval_prompt_data: list[str] = field(default_factory=list)
    """Held-out sets as NAME PATH pairs (each row may name its env)."""
    eval_interval: int | None = None
    """Evaluate every this many rollouts (and before the first and after the last); 0: never (the held-out sets
    are not even loaded)."""
    n_samples_per_eval_prompt: int = 1
    """Episodes per held-out prompt."""
    eval_temperature: float = 0.0
    """Sampling temperature for evaluation (0: greedy)."""
    eval_max_prompts: int | None = None
    """Evaluate on at most this many prompts of each set."""
    save: str | None = None
    """Folder for checkpoints (HF model + full training state)."""
    save_interval: int | None = None
    """Save every this many rollouts (and at the end)."""
    load: str | None = None
    """Resume from a checkpoint folder (or the latest one inside a --save folder)."""
    output_dir: str = "runs/latest"
    """Metrics (JSONL, TensorBoard), plots and the run summary go here."""
    use_wandb: bool = False
    """Also log to Weights & Biases."""
    wandb_project: str = "agentrl"
    seed: int = 0
    """Seeds data order, environment resets and sampling."""
    device: str | None = None
    """cpu | cuda | cuda:N (default: cuda when available)."""
    engine_device: str | None = None
    """Device of the embedded engine without --use-ray (default: the trainer's); e.g. cuda:1 generates on a
    second GPU while the trainer works on the first (weights are copied across at each sync)."""
    use_ray: bool = False
    """Run engines and trainer as Ray actors in placement groups (see agentrl.cluster, docs/scaling.md)."""
    ray_address: str | None = None
    """Ray cluster to join with --use-ray (auto, HOST:6379 or ray://HOST:10001); none: start a local one."""
    num_engines: int = 1
    """Inference engines with --use-ray (embedded-engine actors, or SGLang servers with --engine sglang)."""
    rollout_num_gpus_per_engine: int = 1
    """GPUs of each engine with --use-ray (SGLang servers: the tensor-parallel size)."""
    num_env_workers: int = 0
    """Ray actors that host environments and their tools (CPU-heavy envs) with --use-ray; 0: in the driver."""
    ray_weight_sync: str = "object_store"
    """With --use-ray: object_store (a CPU state dict every engine reads) | nccl (broadcast from the trainer's GPU
    to the engines' GPUs) | gloo (the same broadcast over the CPU)."""
    use_fault_tolerance: bool = True
    """With --use-ray: restart a dead or hung engine with the current weights and re-run its requests elsewhere."""
    engine_health_interval: float = 10.0
    """Seconds between health checks of every engine with --use-ray (0: only failed requests reveal a dead one)."""
    engine_health_timeout: float = 60.0
    """A health check unanswered for this many seconds marks the engine hung."""
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
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def episodes_per_rollout(self) -> int:
        return self.rollout_batch_size * self.rollout.n_samples_per_prompt


# flag -> dotted path into RunConfig. Help and type come from the field the path names.
FLAGS: dict[str, str] = {
    # model, data, environment
    "--model-path": "model_path",
    "--env": "env",
    "--prompt-data": "prompt_data",
    "--input-key": "data.input_key",
    "--label-key": "data.label_key",
    "--metadata-key": "data.metadata_key",
    "--env-key": "data.env_key",
    "--apply-chat-template": "data.apply_chat_template",
    "--skip-bad-rows": "data.on_bad_row",
    # rollout
    "--num-rollout": "num_rollout",
    "--rollout-batch-size": "rollout_batch_size",
    "--n-samples-per-prompt": "rollout.n_samples_per_prompt",
    "--max-turns": "rollout.max_turns",
    "--rollout-max-context-len": "rollout.max_context_tokens",
    "--rollout-max-response-len": "rollout.max_new_tokens_per_turn",
    "--rollout-temperature": "rollout.sampling.temperature",
    "--rollout-top-p": "rollout.sampling.top_p",
    "--rollout-top-k": "rollout.sampling.top_k",
    "--rollout-stop": "rollout.sampling.stop",
    "--rollout-concurrency": "rollout.concurrency",
    "--episode-timeout": "rollout.episode_timeout",
    "--max-episode-retries": "rollout.max_episode_retries",
    "--env-kwargs": "rollout.env_kwargs",
    "--dynamic-sampling": "dynamic_sampling",
    "--over-sampling-factor": "over_sampling_factor",
    "--overlong": "overlong",
    "--overlong-penalty": "overlong_penalty",
    "--custom-generate-function-path": "custom_generate_function_path",
    "--custom-rm-path": "custom_rm_path",
    "--max-staleness": "max_staleness",
    "--partial-rollouts": "partial_rollouts",
    "--trainer-sms": "trainer_sms",
    "--in-flight-weight-updates": "in_flight_weight_updates",
    "--next-rollout-at": "next_rollout_at",
    # algorithm
    "--advantage-estimator": "advantage_estimator",
    "--normalize-advantage-std": "normalize_advantage_std",
    "--turn-baseline": "turn_baseline",
    "--gamma": "gamma",
    "--lambd": "lambd",
    "--policy-loss": "train.policy_loss",
    "--eps-clip": "train.eps_clip",
    "--eps-clip-high": "train.eps_clip_high",
    "--eps-clip-c": "train.eps_clip_c",
    "--loss-aggregation": "train.loss_aggregation",
    "--use-kl-loss": "train.use_kl_loss",
    "--kl-loss-coef": "train.kl_loss_coef",
    "--kl-loss-type": "train.kl_loss_type",
    "--entropy-coef": "train.entropy_coef",
    "--use-tis": "train.use_tis",
    "--tis-cap": "train.tis_cap",
    # optimisation
    "--global-batch-size": "global_batch_size",
    "--num-steps-per-rollout": "num_steps_per_rollout",
    "--lr": "train.lr",
    "--min-lr": "train.min_lr",
    "--lr-warmup-steps": "train.lr_warmup_steps",
    "--lr-decay-style": "train.lr_decay_style",
    "--weight-decay": "train.weight_decay",
    "--clip-grad": "train.clip_grad",
    "--max-tokens-per-gpu": "train.max_tokens_per_gpu",
    "--gradient-checkpointing": "train.gradient_checkpointing",
    "--lora-rank": "train.lora_rank",
    "--lora-alpha": "train.lora_alpha",
    "--ref-on-cpu": "train.ref_on_cpu",
    "--critic-lr": "train.critic_lr",
    # backends
    "--trainer": "trainer",
    "--attention-backend": "attention_backend",
    "--recompute-granularity": "recompute_granularity",
    "--megatron-fusions": "megatron_fusions",
    "--engine": "engine",
    "--colocate": "colocate",
    "--sglang-url": "sglang_url",
    "--engine-max-batch-size": "engine_max_batch_size",
    "--engine-admit-wait-steps": "engine_admit_wait_steps",
    "--engine-prefix-cache": "engine_prefix_cache",
    "--engine-pack-weights": "engine_pack_weights",
    "--engine-dtype": "engine_dtype",
    "--engine-high-priority-stream": "engine_high_priority_stream",
    "--device": "device",
    "--engine-device": "engine_device",
    "--use-ray": "use_ray",
    "--ray-address": "ray_address",
    "--num-engines": "num_engines",
    "--rollout-num-gpus-per-engine": "rollout_num_gpus_per_engine",
    "--num-env-workers": "num_env_workers",
    "--ray-weight-sync": "ray_weight_sync",
    "--use-fault-tolerance": "use_fault_tolerance",
    "--engine-health-interval": "engine_health_interval",
    "--engine-health-timeout": "engine_health_timeout",
    # evaluation, checkpoints, logging
    "--eval-prompt-data": "eval_prompt_data",
    "--eval-interval": "eval_interval",
    "--n-samples-per-eval-prompt": "n_samples_per_eval_prompt",
    "--eval-temperature": "eval_temperature",
    "--eval-max-prompts": "eval_max_prompts",
    "--save": "save",
    "--save-interval": "save_interval",
    "--load": "load",
    "--output-dir": "output_dir",
    "--use-wandb": "use_wandb",
    "--wandb-project": "wandb_project",
    "--seed": "seed",
}

ENGINE_DTYPES = ("float32", "bfloat16", "float16")
"""Values of ``--engine-dtype``."""

_SECTIONS = {
    "--model-path": "model, data, environment", "--num-rollout": "rollout",
    "--advantage-estimator": "algorithm", "--global-batch-size": "optimisation",
    "--trainer": "backends", "--eval-prompt-data": "evaluation, checkpoints, logging",
}


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train an LLM agent with RL on environments: rollout -> filters -> advantages -> "
        "train -> weight sync -> eval/checkpoint. Flags override --config; unknown --sglang-* flags "
        "pass through to SGLang.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of flag values (keys: flag names); flags given here override it")
    group = p
    for flag, path in FLAGS.items():
        if flag in _SECTIONS:
            group = p.add_argument_group(_SECTIONS[flag])
        owner, name = _owner(path)
        default = getattr(owner(), name)
        kind = _kind(owner, name)
        help_text = (_field_docs(owner).get(name) or "").replace("%", "%%")
        if path == "data.on_bad_row":
            group.add_argument(flag, action="store_const", const="skip", help="skip malformed prompt rows (counted and logged) instead of failing")
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{help_text} (default: {default})")
        elif kind is dict:
            group.add_argument(flag, type=_json_object, metavar="JSON", help=f"{help_text} (default: {default})")
        elif kind is list:
            nargs = "+" if path in ("eval_prompt_data", "sglang_url", "rollout.sampling.stop") else "*"
            group.add_argument(flag, nargs=nargs, help=help_text)
        else:
            group.add_argument(flag, type=_parser_for(kind), metavar=_metavar(kind),
                               help=f"{help_text} (default: {default})")
    return p


def parse_args(argv: list[str] | None = None, *, prog: str = "train.py") -> RunConfig:
    """Command line (and ``--config`` file) -> :class:`RunConfig`. Raises :class:`ConfigError`
    for unknown keys in the file; argparse exits for unknown flags."""
    argv = list(argv or [])
    sglang = [a for a in argv if a.startswith("--sglang-") and a.split("=")[0] not in FLAGS]
    argv, passthrough = _split_passthrough(argv, sglang)
    ns = vars(build_parser(prog).parse_args(argv))
    cfg = RunConfig()
    problems: list[str] = []
    if ns.get("config"):
        problems += _apply_file(cfg, ns.pop("config"))
    else:
        ns.pop("config", None)
    for key, value in ns.items():
        _set(cfg, FLAGS["--" + key.replace("_", "-")], value)
    cfg.sglang_args = cfg.sglang_args + passthrough
    finalize(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def finalize(cfg: RunConfig) -> None:
    """Fill derived values (not stored by the user): global batch size, critic use, temperature."""
    if cfg.global_batch_size is None and cfg.num_steps_per_rollout > 0:
        cfg.global_batch_size = cfg.episodes_per_rollout // cfg.num_steps_per_rollout
    cfg.train.use_critic = cfg.advantage_estimator == "gae"
    cfg.train.rollout_temperature = cfg.rollout.sampling.temperature
    cfg.train.seed = cfg.seed
    cfg.train.max_length_norm = float(cfg.rollout.max_context_tokens)


def validate(cfg: RunConfig) -> list[str]:
    """Every problem found before loading anything, each with how to fix it."""
    from agentrl import algo

    problems: list[str] = []
    need_positive = {"--num-rollout": cfg.num_rollout, "--rollout-batch-size": cfg.rollout_batch_size,
                     "--n-samples-per-prompt": cfg.rollout.n_samples_per_prompt,
                     "--num-steps-per-rollout": cfg.num_steps_per_rollout,
                     "--max-tokens-per-gpu": cfg.train.max_tokens_per_gpu,
                     "--rollout-max-context-len": cfg.rollout.max_context_tokens,
                     "--rollout-max-response-len": cfg.rollout.max_new_tokens_per_turn}
    for flag, value in need_positive.items():
        if value is None or value < 1:
            problems.append(f"{flag} must be >= 1; got {value}")
    if cfg.engine_admit_wait_steps is not None and cfg.engine_admit_wait_steps < 0:
        problems.append(f"--engine-admit-wait-steps must be >= 0; got {cfg.engine_admit_wait_steps}")
    if cfg.global_batch_size is not None and cfg.global_batch_size >= 1 and cfg.num_steps_per_rollout >= 1:
        if cfg.episodes_per_rollout != cfg.global_batch_size * cfg.num_steps_per_rollout:
            problems.append(
                f"--rollout-batch-size x --n-samples-per-prompt ({cfg.rollout_batch_size} x "
                f"{cfg.rollout.n_samples_per_prompt} = {cfg.episodes_per_rollout}) must equal --global-batch-size x "
                f"--num-steps-per-rollout ({cfg.global_batch_size} x {cfg.num_steps_per_rollout} = "
                f"{cfg.global_batch_size * cfg.num_steps_per_rollout}); e.g. set --global-batch-size "
                f"{cfg.episodes_per_rollout // max(cfg.num_steps_per_rollout, 1)} or leave it out to derive it")
    if cfg.advantage_estimator in ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline", "gigpo") \
            and cfg.rollout.n_samples_per_prompt < 2:
        problems.append(f"--advantage-estimator {cfg.advantage_estimator} compares episodes of the same prompt: "
                        f"set --n-samples-per-prompt >= 2 (got {cfg.rollout.n_samples_per_prompt})")
    if cfg.turn_baseline and cfg.advantage_estimator not in algo.TURN_BASELINE_ESTIMATORS:
        problems.append(f"--turn-baseline is for {', '.join(sorted(algo.TURN_BASELINE_ESTIMATORS))}; "
                        f"--advantage-estimator {cfg.advantage_estimator} does not take it")
    if cfg.rollout.max_episode_retries is None or cfg.rollout.max_episode_retries < 0:
        problems.append(f"--max-episode-retries must be >= 0; got {cfg.rollout.max_episode_retries}")
    for what, check in (("advantage estimator", lambda: algo.get_advantage_estimator(cfg.advantage_estimator)),
                        ("policy loss", lambda: algo.get_policy_loss(cfg.train.policy_loss)),
                        ("aggregation", lambda: algo.check_aggregation(cfg.train.loss_aggregation)),
                        ("kl type", lambda: _check_kl(cfg.train.kl_loss_type)),
                        ("loss settings", lambda: algo.PolicyLossConfig(
                            eps_clip=cfg.train.eps_clip, eps_clip_high=cfg.train.eps_clip_high,
                            eps_clip_c=cfg.train.eps_clip_c, tis_cap=cfg.train.tis_cap)),
                        ("sampling", lambda: cfg.rollout.sampling.validate())):
        try:
            check()
        except ValueError as e:
            problems.append(f"{what}: {e}")
    for flag, value, choices in (("--trainer", cfg.trainer, ("torch", "megatron")),
                                 ("--attention-backend", cfg.attention_backend, ("auto", "te", "sdpa", "local")),
                                 ("--recompute-granularity", cfg.recompute_granularity or "none",
                                  ("none", "full", "selective")),
                                 ("--engine", cfg.engine, ("embedded", "sglang")),
                                 ("--overlong", cfg.overlong, ("keep", "mask", "penalty")),
                                 ("--lr-decay-style", cfg.train.lr_decay_style, ("constant", "cosine", "linear"))):
        if value not in choices:
            problems.append(f"{flag} must be one of {', '.join(choices)}; got {value!r}{_hint(value, choices)}")
    if cfg.train.use_kl_loss and cfg.train.kl_loss_coef == 0:
        problems.append("--use-kl-loss is on but --kl-loss-coef is 0: set a coefficient (e.g. 0.001) or drop --use-kl-loss")
    if cfg.prompt_data is None:
        problems.append("--prompt-data is required (a .jsonl/.parquet file of prompts)")
    elif not cfg.prompt_data.startswith("hf:") and not Path(cfg.prompt_data).expanduser().exists():
        problems.append(f"--prompt-data {cfg.prompt_data}: no such file or folder")
    if len(cfg.eval_prompt_data) % 2:
        problems.append(f"--eval-prompt-data takes NAME PATH pairs; got {cfg.eval_prompt_data}")
    else:
        for name, path in zip(cfg.eval_prompt_data[::2], cfg.eval_prompt_data[1::2]):
            if not path.startswith("hf:") and not Path(path).expanduser().exists():
                problems.append(f"--eval-prompt-data {name}: no such file {path}")
    if cfg.env is not None:
        from agentrl.env.registry import EnvNotFoundError, resolve_id

        try:
            cfg.env = resolve_id(cfg.env)
        except EnvNotFoundError as e:
            problems.append(f"--env: {e}")
    try:
        from agentrl.models import ModelNotFoundError, resolve_model_path

        if not cfg.model_path.lower().startswith(("smollm2", "tiny-")):  # aliases are built on first use
            resolve_model_path(cfg.model_path)
    except ModelNotFoundError as e:
        problems.append(f"--model-path: {e}")
    for flag, spec in (("--custom-generate-function-path", cfg.custom_generate_function_path),
                       ("--custom-rm-path", cfg.custom_rm_path)):
        if spec is not None and ":" not in spec:
            problems.append(f"{flag} {spec!r} must look like 'module:function' or 'file.py:function'")
        elif spec is not None:
            module = spec.rpartition(":")[0]
            if (module.endswith(".py") or "/" in module) and not Path(module).expanduser().exists():
                problems.append(f"{flag} {spec!r}: no such file {module}")
    if cfg.trainer == "megatron":
        import importlib.util

        if importlib.util.find_spec("megatron") is None:
            problems.append("--trainer megatron needs megatron-core: pip install 'agentrl[megatron]'")
    if cfg.engine == "sglang" and not cfg.sglang_url:
        import importlib.util

        if importlib.util.find_spec("sglang") is None:
            problems.append("--engine sglang without --sglang-url launches SGLang servers, but sglang is not "
                            "installed: pip install 'agentrl[sglang]' or give --sglang-url URL")
    if cfg.engine_device is not None:
        if cfg.engine != "embedded" or cfg.use_ray:
            problems.append("--engine-device places the in-process embedded engine; with --use-ray or --engine sglang "
                            "the placement decides where engines run")
        elif cfg.engine_device.split(":")[0] not in ("cpu", "cuda"):
            problems.append(f"--engine-device must be cpu, cuda or cuda:N; got {cfg.engine_device!r}")
    if cfg.engine_dtype is not None:
        if cfg.engine_dtype not in ENGINE_DTYPES:
            problems.append(f"--engine-dtype must be one of {', '.join(ENGINE_DTYPES)}; got {cfg.engine_dtype!r}")
        elif cfg.engine != "embedded":
            problems.append("--engine-dtype sets the embedded engine's weights; SGLang servers take --sglang-dtype")
    if cfg.load is not None and not Path(cfg.load).expanduser().exists():
        problems.append(f"--load {cfg.load}: no such checkpoint folder")
    elif cfg.load is not None:
        from agentrl.checkpoint import find_checkpoint

        try:
            find_checkpoint(cfg.load)
        except FileNotFoundError as e:  # a folder, but neither a checkpoint nor one with a 'latest'
            problems.append(f"--load: {e}")
    for flag, value, low in (("--save-interval", cfg.save_interval, 1), ("--eval-interval", cfg.eval_interval, 0)):
        if value is not None and value < low:
            problems.append(f"{flag} must be >= {low}; got {value}")
    if cfg.save_interval and not cfg.save:
        problems.append("--save-interval needs --save DIR")
    problems += _cluster_problems(cfg)
    return problems


def _cluster_problems(cfg: RunConfig) -> list[str]:
    """--use-ray, engines and async settings."""
    import importlib.util

    problems = []
    for flag, value, low in (("--max-staleness", cfg.max_staleness, 0), ("--num-engines", cfg.num_engines, 1),
                             ("--rollout-num-gpus-per-engine", cfg.rollout_num_gpus_per_engine, 1),
                             ("--num-env-workers", cfg.num_env_workers, 0)):
        if value is None or value < low:
            problems.append(f"{flag} must be >= {low}; got {value}")
    if cfg.in_flight_weight_updates:
        if cfg.max_staleness is not None and cfg.max_staleness < 1:
            problems.append("--in-flight-weight-updates changes how a weight update meets the turns that overlap "
                            "it: it needs --max-staleness >= 1")
        elif cfg.engine == "sglang":
            problems.append("--in-flight-weight-updates needs an engine that loads weights between decode steps "
                            "(the embedded engine); SGLang servers finish or abort their requests first")
    if not 0.0 <= cfg.next_rollout_at <= 1.0:
        problems.append(f"--next-rollout-at is a fraction of a rollout's episodes, in [0, 1]; got {cfg.next_rollout_at}")
    if cfg.trainer_sms is not None:
        if cfg.trainer_sms < 1:
            problems.append(f"--trainer-sms must be >= 1; got {cfg.trainer_sms}")
        elif cfg.max_staleness is not None and cfg.max_staleness < 1:
            problems.append("--trainer-sms shares the GPU between training and the generation that overlaps it: "
                            "it needs --max-staleness >= 1")
        elif cfg.use_ray:
            problems.append("--trainer-sms confines an in-process trainer's kernels; with --use-ray the trainer "
                            "runs in its own actor: leave it out")
        elif (cfg.device or ("cuda" if _cuda_available() else "cpu")).split(":")[0] != "cuda":
            problems.append("--trainer-sms confines the trainer's kernels to part of its CUDA GPU; the trainer "
                            f"runs on {cfg.device or 'the CPU'} here")
    if cfg.engine_health_interval < 0 or cfg.engine_health_timeout <= 0:
        problems.append(f"--engine-health-interval must be >= 0 and --engine-health-timeout > 0; got "
                        f"{cfg.engine_health_interval} and {cfg.engine_health_timeout}")
    if cfg.ray_weight_sync not in ("object_store", "nccl", "gloo"):
        problems.append(f"--ray-weight-sync must be one of object_store, nccl, gloo; got {cfg.ray_weight_sync!r}"
                        f"{_hint(cfg.ray_weight_sync, ('object_store', 'nccl', 'gloo'))}")
    elif cfg.ray_weight_sync != "object_store" and cfg.engine == "sglang":
        problems.append("--ray-weight-sync nccl/gloo broadcasts to embedded-engine actors; SGLang servers load "
                        "weights from disk: leave --ray-weight-sync object_store with --engine sglang")
    if not cfg.use_ray:
        for flag, value, default in (("--num-engines", cfg.num_engines, 1), ("--num-env-workers", cfg.num_env_workers, 0),
                                     ("--ray-address", cfg.ray_address, None)):
            if value != default:
                problems.append(f"{flag} {value} needs --use-ray (several engines and env workers run as Ray actors)")
    elif importlib.util.find_spec("ray") is None:
        problems.append("--use-ray needs Ray: pip install 'agentrl[ray]'")
    return problems


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The flag view of a config: ``{flag-name: value}``, loadable again with ``--config``."""
    return {flag[2:]: _get(cfg, path) for flag, path in FLAGS.items() if path != "data.on_bad_row"} | {
        "skip-bad-rows": cfg.data.on_bad_row == "skip"}


# -- internals -------------------------------------------------------------------------------
def _check_kl(kind: str) -> None:
    from agentrl.algo import KL_ESTIMATORS

    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}{_hint(kind, KL_ESTIMATORS)}")


def _hint(value: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _apply_file(cfg: RunConfig, path: str) -> list[str]:
    import yaml

    file = Path(path).expanduser()
    if not file.exists():
        return [f"--config {path}: no such file"]
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:  # its message names the line and column
        return [f"--config {path}: not valid YAML: " + " ".join(str(e).split())]
    if not isinstance(data, dict):
        return [f"--config {path}: expected a mapping of flag names to values"]
    problems = []
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        if flag == "--skip-bad-rows":
            cfg.data.on_bad_row = "skip" if value else "error"
            continue
        if flag not in FLAGS:
            problems.append(f"--config {path}: unknown key {key!r}{_hint(flag, FLAGS)}")
            continue
        try:
            _set(cfg, FLAGS[flag], _coerce(cfg, FLAGS[flag], value))
        except (TypeError, ValueError) as e:
            problems.append(f"--config {path}: {key}: {e}")
    return problems


def _coerce(cfg: RunConfig, path: str, value: Any) -> Any:
    owner, name = _owner(path)
    kind = _kind(owner, name)
    if value is None or kind in (list, dict, bool, str) and isinstance(value, kind):
        return value
    if kind is list:
        return [value] if not isinstance(value, list) else value
    if kind is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {value!r}")
        return value
    if kind is bool:
        raise TypeError(f"expected true or false, got {value!r}")
    return kind(value)


def _split_passthrough(argv: list[str], sglang: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``--sglang-foo [value]`` flags out of argv (they are SGLang's, not ours)."""
    keep, passthrough = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in sglang or a.split("=")[0] in sglang:
            passthrough.append("--" + a[len("--sglang-"):])
            if "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                passthrough.append(argv[i + 1])
                i += 1
        else:
            keep.append(a)
        i += 1
    return keep, passthrough


def _owner(path: str) -> tuple[type, str]:
    parts = path.split(".")
    cls: type = RunConfig
    for part in parts[:-1]:
        cls = _resolved_hints(cls)[part]
    return cls, parts[-1]


def _kind(cls: type, name: str) -> type:
    hint = _resolved_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = typing.get_origin(hint)
    if base in (list, dict):
        return base
    if args and typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        hint = args[0]
        if typing.get_origin(hint) is list:
            return list
    return hint if isinstance(hint, type) else str


@functools.cache
def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parser_for(kind: type):
    if kind is int:
        return _int_or_none
    if kind is float:
        return _float_or_none
    return kind


def _json_object(s: str) -> dict:
    import json

    try:
        value = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"k\": 1}}': {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _int_or_none(s: str) -> int | None:
    return None if s.lower() in ("none", "null") else int(s)


def _float_or_none(s: str) -> float | None:
    return None if s.lower() in ("none", "null") else float(s)


def _metavar(kind: type) -> str:
    return {int: "N", float: "X", str: "STR"}.get(kind, "V")


def _set(cfg: RunConfig, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    obj: Any = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, name, value)


def _get(cfg: RunConfig, path: str) -> Any:
    obj: Any = cfg
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """The string literal under each dataclass field (its doc), read from the source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs

