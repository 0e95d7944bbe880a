"""The run configuration: each subsystem's settings, composed; one command line.

:class:`RunConfig` holds the loop's own settings and, as fields, the settings class of every
subsystem (``data``, ``sft``, ``curriculum``, ``rollout``, ``filters``, ``signal``, ``hooks``, ``algo``,
``train``, ``megatron``, ``engine``, ``cluster``, ``group``, ``asynchrony``, ``eval``, ``checkpoint``,
``output``). Each class names its
flags (``FLAGS``), documents each field (the docstring under it is the flag's ``--help``) and checks
its own fields (``problems()``); :func:`validate` adds only the checks that span subsystems. Flags use
slime's names where the concept is the same (``--rollout-batch-size``, ``--n-samples-per-prompt``,
``--eps-clip-high``, ``--tensor-model-parallel-size``...); :mod:`agentrl.utils.flags` builds the
parser, the same generator ``agentrl eval``, ``agentrl serve`` and ``agentrl retriever`` use.

``--config recipe.yaml`` sets values from a file (keys are flag names, dashes or underscores); flags
on the command line override it. :func:`validate` checks everything that can be checked before a
model or a dataset is loaded and reports all problems at once. Importing this module does not
import torch, so ``train.py --help`` answers at once.

Example::

    >>> cfg = parse_args(["--env", "Echo-v0", "--prompt-data", "x.jsonl", "--rollout-batch-size", "4"])
    >>> cfg.rollout_batch_size, cfg.rollout.n_samples_per_prompt, cfg.global_batch_size
    (4, 4, 16)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from agentrl.algo.config import AlgoConfig
from agentrl.checkpoint import CheckpointConfig
from agentrl.cluster.config import ClusterConfig, TrainerGroupConfig
from agentrl.data.curriculum import CurriculumConfig
from agentrl.data.prompts import DataConfig
from agentrl.engine.config import ENGINE_DTYPES, EngineSettings
from agentrl.eval.config import EvalSchedule
from agentrl.obs.config import OutputConfig
from agentrl.rollout.config import AsyncConfig, FilterConfig, HookConfig, RolloutConfig
from agentrl.rollout.signal import SignalConfig
from agentrl.train.config import TrainConfig
from agentrl.train.megatron.config import MegatronTrainerConfig
from agentrl.train.sft import SftConfig
from agentrl.utils.flags import FlagTable, blank_path

__all__ = ["ENGINE_DTYPES", "ConfigError", "RunConfig", "finalize", "from_mapping", "parse_args", "to_dict", "validate"]


class ConfigError(ValueError):
    """One or more configuration problems, each with how to fix it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class RunConfig:
    """Settings of a training run: the loop's own, then each subsystem's."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--model-path": "model_path", "--chat-template": "chat_template",
        "--allow-non-incremental": "allow_non_incremental", "--env": "env", "--prompt-data": "prompt_data",
        "--num-rollout": "num_rollout", "--rollout-batch-size": "rollout_batch_size",
        "--global-batch-size": "global_batch_size", "--num-steps-per-rollout": "num_steps_per_rollout",
        "--trainer": "trainer", "--device": "device", "--seed": "seed",
    }

    model_path: str = "smollm2-135m-instruct"
    """HF model folder, hub id or alias (smollm2-135m-instruct, tiny-qwen2, ...)."""
    chat_template: str | None = None
    """A jinja2 chat template file replacing the tokenizer's. For a model whose own template rewrites earlier turns, one
    that renders turn by turn keeps tokens exact (docs/tokens.md)."""
    allow_non_incremental: bool = False
    """Train with a chat template that fails the incrementality check (docs/tokens.md): tokens stay exactly what the
    engine saw, but they differ from what the template renders for the whole conversation."""
    env: str | None = None
    """Environment id for rows that name none (e.g. agentrl/Math-v0)."""
    prompt_data: str | None = None
    """Training prompts: .jsonl/.json/.parquet, a folder, or hf:org/name[:config][@split]."""
    num_rollout: int = 10
    """Rollouts (generate -> train -> sync iterations) to run (0 with --sft-data: the warm start alone)."""
    rollout_batch_size: int = 8
    """Prompts per rollout (each expands to --n-samples-per-prompt episodes)."""
    global_batch_size: int | None = None
    """Episodes per optimiser step (default: all episodes of a rollout / --num-steps-per-rollout)."""
    num_steps_per_rollout: int = 1
    """Optimiser steps per rollout."""
    trainer: Literal["torch", "megatron"] = "torch"
    """The training backend: torch (any HF causal LM) | megatron (megatron-core, docs/megatron.md)."""
    device: str | None = None
    """Trainer device: cpu | cuda | cuda:N (default: cuda when available)."""
    seed: int = 0
    """Seeds environment resets and sampling. In training, also the data order."""
    data: DataConfig = field(default_factory=DataConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    hooks: HookConfig = field(default_factory=HookConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    megatron: MegatronTrainerConfig = field(default_factory=MegatronTrainerConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    group: TrainerGroupConfig = field(default_factory=TrainerGroupConfig)
    asynchrony: AsyncConfig = field(default_factory=AsyncConfig)
    eval: EvalSchedule = field(default_factory=EvalSchedule)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def episodes_per_rollout(self) -> int:
        return self.rollout_batch_size * self.rollout.n_samples_per_prompt


TABLE = FlagTable(RunConfig)
"""Every flag of ``train.py`` / ``agentrl train``."""

DESCRIPTION = ("Train an LLM agent with RL on environments: rollout -> filters -> advantages -> train -> weight sync "
               "-> eval/checkpoint. Flags override --config; unknown --sglang-* flags pass through to SGLang.")


def build_parser(prog: str = "train.py"):
    return TABLE.parser(prog, DESCRIPTION)


def parse_args(argv: list[str] | None = None, *, prog: str = "train.py") -> RunConfig:
    """Command line (and ``--config`` file) -> :class:`RunConfig`. Raises :class:`ConfigError` for
    unknown keys or bad values in the file; argparse exits for unknown flags."""
    argv = list(argv or [])
    known = set(TABLE.by_name)
    sglang = [a for a in argv if a.startswith("--sglang-") and a.split("=")[0] not in known]
    argv, passthrough = _split_passthrough(argv, sglang)
    cfg, _, problems = TABLE.parse(argv, prog=prog, description=DESCRIPTION)
    cfg.engine.sglang_args = cfg.engine.sglang_args + passthrough
    finalize(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def from_mapping(data: dict[str, Any], source: str) -> RunConfig:
    """A config from ``{flag-name: value}`` (what :func:`to_dict` writes, e.g. a checkpoint's ``state.json``);
    raises :class:`ConfigError` naming ``source`` for keys or values that do not fit."""
    cfg = RunConfig()
    problems = TABLE.apply_mapping(cfg, data, source)
    finalize(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The flag view of a config: ``{flag-name: value}``, loadable again with ``--config``."""
    return TABLE.to_dict(cfg)


def finalize(cfg: RunConfig) -> None:
    """Fill derived values (not stored by the user): global batch size and what the trainer needs to know."""
    if cfg.global_batch_size is None and cfg.num_steps_per_rollout > 0:
        cfg.global_batch_size = cfg.episodes_per_rollout // cfg.num_steps_per_rollout
    cfg.train.use_critic = cfg.algo.advantage_estimator == "gae"
    cfg.train.rollout_temperature = cfg.rollout.sampling.temperature
    cfg.train.seed = cfg.seed
    cfg.train.max_length_norm = float(cfg.rollout.max_context_tokens)
    if cfg.group.world_size > 1:  # a trainer group is a set of Ray actors
        cfg.cluster.use_ray = True


def validate(cfg: RunConfig) -> list[str]:
    """Every problem found before loading anything, each with how to fix it: each subsystem's own, then the
    ones that span subsystems."""
    # --dry-run reads only the model's config: the files of prompts, evaluation and outputs are not checked
    owners = DRY_RUN_CHECKS if cfg.group.dry_run else [f.name for f in dataclasses.fields(cfg)]
    problems = [p for name in owners if hasattr(getattr(cfg, name), "problems") for p in getattr(cfg, name).problems()]
    problems += _loop_problems(cfg) + _objective_problems(cfg) + _backend_problems(cfg) + _layout_problems(cfg)
    if not cfg.group.dry_run:
        problems += _input_problems(cfg) + _earlier_run_problems(cfg)
    return problems


DRY_RUN_CHECKS = ["algo", "train", "megatron", "cluster", "group"]
"""The subsystems whose own checks ``--dry-run`` runs (the ones the layout and the memory estimate read)."""


def _loop_problems(cfg: RunConfig) -> list[str]:
    derived = cfg.global_batch_size is None  # (left out: derived; 0 or less given is a problem)
    problems = [f"{flag} must be >= 1; got {value}" for flag, value in (
        ("--rollout-batch-size", cfg.rollout_batch_size), ("--num-steps-per-rollout", cfg.num_steps_per_rollout),
        ("--global-batch-size", 1 if derived else cfg.global_batch_size)) if value is None or value < 1]
    if not 0 <= cfg.seed < 2**32:  # what numpy's global generator takes
        problems.append(f"--seed must be in [0, 2**32); got {cfg.seed}")
    if cfg.num_rollout is None or cfg.num_rollout < (0 if cfg.sft.data else 1):
        problems.append(f"--num-rollout must be >= 1 (0 with --sft-data: the warm start alone); got {cfg.num_rollout}")
    if cfg.sft.data and cfg.algo.advantage_estimator == "gae":
        problems.append("--sft-data with --advantage-estimator gae: the warm start has no value targets for the critic; "
                        "warm-start in a run of its own with another estimator (--num-rollout 0) and --load its checkpoint")
    if cfg.global_batch_size is not None and cfg.global_batch_size >= 1 and cfg.num_steps_per_rollout >= 1:
        if cfg.episodes_per_rollout != cfg.global_batch_size * cfg.num_steps_per_rollout:
            problems.append(
                f"--rollout-batch-size x --n-samples-per-prompt ({cfg.rollout_batch_size} x "
                f"{cfg.rollout.n_samples_per_prompt} = {cfg.episodes_per_rollout}) must equal --global-batch-size x "
                f"--num-steps-per-rollout ({cfg.global_batch_size} x {cfg.num_steps_per_rollout} = "
                f"{cfg.global_batch_size * cfg.num_steps_per_rollout}); e.g. set --global-batch-size "
                f"{cfg.episodes_per_rollout // max(cfg.num_steps_per_rollout, 1)} or leave it out to derive it")
    if cfg.algo.group_relative and cfg.rollout.n_samples_per_prompt < 2:
        problems.append(f"--advantage-estimator {cfg.algo.advantage_estimator} compares episodes of the same prompt: "
                        f"set --n-samples-per-prompt >= 2 (got {cfg.rollout.n_samples_per_prompt})")
    return problems


def _objective_problems(cfg: RunConfig) -> list[str]:
    """The loss settings, as the trainers will build them."""
    from agentrl import algo

    try:
        algo.ObjectiveConfig.from_train_config(cfg.train)
    except ValueError as e:
        return [f"loss settings: {e}"]
    return []


def _input_problems(cfg: RunConfig) -> list[str]:
    """The files and names the run reads: prompts, environment, model, chat template."""
    problems = []
    if cfg.prompt_data is None or not cfg.prompt_data.strip():
        problems.append("--prompt-data is required (a .jsonl/.parquet file of prompts)")
    elif not cfg.prompt_data.startswith("hf:") and not Path(cfg.prompt_data).expanduser().exists():
        problems.append(f"--prompt-data {cfg.prompt_data}: no such file or folder")
    if cfg.env is not None:
        from agentrl.env.registry import EnvNotFoundError, resolve_id

        try:
            cfg.env = resolve_id(cfg.env)
        except EnvNotFoundError as e:
            problems.append(f"--env: {e}")
    from agentrl.models import ModelNotFoundError, resolve_model_path

    try:
        if blank := blank_path("--model-path", cfg.model_path, optional=False):
            problems.append(blank)
        elif not cfg.model_path.lower().startswith(("smollm2", "tiny-")):  # aliases are built on first use
            resolve_model_path(cfg.model_path)
    except ModelNotFoundError as e:
        problems.append(f"--model-path: {e}")
    if blank := blank_path("--chat-template", cfg.chat_template):
        problems.append(blank)
    elif cfg.chat_template is not None and not Path(cfg.chat_template).expanduser().is_file():
        problems.append(f"--chat-template {cfg.chat_template}: no such file")
    return problems


def _backend_problems(cfg: RunConfig) -> list[str]:
    """Settings that depend on which trainer, engine and cluster the run uses."""
    import importlib.util

    problems = []
    if cfg.trainer == "megatron" and importlib.util.find_spec("megatron") is None:
        problems.append("--trainer megatron needs megatron-core: pip install 'agentrl[megatron]'")
    if cfg.engine.kind == "sglang" and not cfg.engine.sglang_url and importlib.util.find_spec("sglang") is None:
        problems.append("--engine sglang without --sglang-url launches SGLang servers, but sglang is not "
                        "installed: pip install 'agentrl[sglang]' or give --sglang-url URL")
    if cfg.engine.device is not None and cfg.cluster.use_ray:
        problems.append("--engine-device places the in-process embedded engine; with --use-ray the placement decides "
                        "where engines run")
    if cfg.asynchrony.in_flight_weight_updates and cfg.engine.kind == "sglang":
        problems.append("--in-flight-weight-updates needs an engine that loads weights between decode steps (the "
                        "embedded engine); SGLang servers finish or abort their requests first")
    if cfg.asynchrony.trainer_sms is not None and cfg.asynchrony.trainer_sms >= 1 and cfg.asynchrony.max_staleness >= 1:
        if cfg.cluster.use_ray:
            problems.append("--trainer-sms confines an in-process trainer's kernels; with --use-ray the trainer runs "
                            "in its own actor: leave it out")
        elif (cfg.device or ("cuda" if _cuda_available() else "cpu")).split(":")[0] != "cuda":
            problems.append("--trainer-sms confines the trainer's kernels to part of its CUDA GPU; the trainer runs "
                            f"on {cfg.device or 'the CPU'} here")
    if cfg.cluster.ray_weight_sync != "object_store" and cfg.engine.kind == "sglang":
        problems.append("--ray-weight-sync nccl/gloo broadcasts to embedded-engine actors; SGLang servers load "
                        "weights from disk: leave --ray-weight-sync object_store with --engine sglang")
    return problems


def _layout_problems(cfg: RunConfig) -> list[str]:
    """The trainer's ranks against the model (its config.json only) and the batch: agentrl.train.layout."""
    import importlib.util

    from agentrl.train.layout import TrainerLayout, layout_problems, model_config, model_dims

    layout = TrainerLayout.of(cfg)
    if min(layout.tp, layout.pp, layout.cp, layout.nodes, layout.world) < 1:
        return []  # a size below 1: the megatron and group settings' own checks name it
    if layout.world == 1 and layout.model_parallel == 1:
        return []
    problems = layout_problems(layout, model_dims(model_config(cfg.model_path)), cfg.global_batch_size)
    if layout.world > 1 and not cfg.cluster.use_ray and importlib.util.find_spec("ray") is None:
        problems.append(f"{layout.world} trainer ranks run as Ray actors: pip install 'agentrl[ray]'")
    # (with use_ray set, as finalize() does for a group, the cluster's own check says it once)
    return problems


def _earlier_run_problems(cfg: RunConfig) -> list[str]:
    """A run is never written over: --output-dir or --save holding one needs --overwrite or --load."""
    if cfg.output.overwrite or cfg.checkpoint.load is not None:
        return []
    problems = []
    metrics = Path(cfg.output.output_dir).expanduser() / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        problems.append(f"--output-dir {cfg.output.output_dir} holds an earlier run ({metrics.name}): pass "
                        "--overwrite to replace it, --load CHECKPOINT to resume it, or choose another --output-dir")
    save = cfg.checkpoint.save
    if save and (Path(save).expanduser() / "latest").is_file():
        problems.append(f"--save {save} holds an earlier run's checkpoints: pass --overwrite to delete them, "
                        f"--load {save} to resume that run, or choose another --save")
    return problems


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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


