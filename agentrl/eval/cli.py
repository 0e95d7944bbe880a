"""``agentrl eval``: evaluate an agent on held-out tasks, with the training episode loop.

Usage::

    agentrl eval --model-path smollm2-135m-instruct \\
        --task gsm8k=GSM8K-v0 --task 'lake=FrozenLake-v0,random_map_size=4' \\
        --n-samples-per-eval-prompt 4 --k 1,2,4 --eval-max-prompts 50 --output-dir runs/eval-base
    agentrl eval --sglang-url http://localhost:30000 --tokenizer-path Qwen/Qwen2.5-7B-Instruct \\
        --tasks tasks.yaml --output-dir runs/eval-qwen
    agentrl eval compare runs/eval-base runs/eval-step100

Writes into ``--output-dir``: ``run.json`` (settings), ``episodes.jsonl`` (every episode, appended as
groups finish), ``summary.json``, ``report.md`` with ``chart_*.png``; prints a table. Rerunning
the same command resumes an interrupted run without repeating finished episodes.
See ``docs/eval.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agentrl.config import ConfigError
from agentrl.data.prompts import SKIP_HINT, DataError
from agentrl.engine.base import Engine, SamplingParams
from agentrl.eval import report
from agentrl.eval.from_training import heldout_tasks, resolve, task_settings
from agentrl.eval.runner import HELDOUT_SEED_OFFSET, EvalConfig, EvalTask, evaluate
from agentrl.eval.store import RunStore, SettingsChanged
from agentrl.eval.tasks import (TaskError, TaskSpec, build_task, check_unique, data_fingerprint, load_task_file,
                                parse_task_arg)
from agentrl.models import ModelNotFoundError
from agentrl.obs.progress import progress
from agentrl.utils.extras import MissingExtra
from agentrl.utils.flags import Flag, FlagTable
from agentrl.utils.memory import release_freed_memory

log = logging.getLogger(__name__)


class EvalArgsError(ValueError):
    """Arguments that cannot work together (the message lists every problem)."""


@dataclass
class EvalArgs:
    """Settings of ``agentrl eval``; each field's doc is its ``--help`` text. Flags share training's names where the
    concept is the same (--rollout-max-response-len, --eval-temperature, --output-dir...)."""

    FLAGS: ClassVar[dict[str, Any]] = {
        "--model-path": "model_path", "--config": "config",
        "--sglang-url": Flag("--sglang-url", "engine_url", aliases=("--engine-url",), metavar="URL"),
        "--tokenizer-path": Flag("--tokenizer-path", "tokenizer", aliases=("--tokenizer",), metavar="PATH_OR_ALIAS"),
        "--chat-template": Flag("--chat-template", "chat_template", metavar="FILE"),
        "--task": Flag("--task", "task", metavar="SPEC"), "--tasks": Flag("--tasks", "tasks", metavar="FILE.yaml"),
        "--n-samples-per-eval-prompt": Flag("--n-samples-per-eval-prompt", "n_samples", aliases=("--n-samples",)),
        "--k": Flag("--k", "k", metavar="K[,K...]"),
        "--eval-temperature": Flag("--eval-temperature", "temperature", aliases=("--temperature",)),
        "--rollout-top-p": Flag("--rollout-top-p", "top_p", aliases=("--top-p",)),
        "--rollout-top-k": Flag("--rollout-top-k", "top_k", aliases=("--top-k",)),
        "--rollout-stop": Flag("--rollout-stop", "stop", aliases=("--stop",), metavar="TEXT"),
        "--rollout-max-response-len": Flag("--rollout-max-response-len", "max_response_len",
                                           aliases=("--max-response-len",)),
        "--rollout-max-context-len": Flag("--rollout-max-context-len", "max_context_len", aliases=("--max-context-len",)),
        "--max-turns": "max_turns", "--seed": "seed",
        "--eval-max-prompts": Flag("--eval-max-prompts", "limit", aliases=("--limit",)),
        "--rollout-concurrency": Flag("--rollout-concurrency", "concurrency", aliases=("--concurrency",)),
        "--episode-timeout": "episode_timeout", "--success-threshold": "success_threshold",
        "--output-dir": Flag("--output-dir", "out", aliases=("--out",), metavar="DIR"), "--overwrite": "overwrite",
        "--examples": "examples", "--plots": "plots",
        "--engine-device": Flag("--engine-device", "device", aliases=("--device",), metavar="DEVICE"),
        "--engine-max-batch-size": "engine_max_batch_size",
    }

    model_path: str | None = None
    """HF model folder, hub id or alias (smollm2-135m-instruct, tiny-qwen2, ...). A training checkpoint (CKPT,
    CKPT/model, or a --save folder for its latest) given without --task or --config is evaluated as its training run
    evaluated it."""
    config: str | None = None
    """Evaluate as a training run did: a recipe .yaml, a run's config.json or a checkpoint folder, whose held-out sets
    become the tasks, with its environment and env kwargs (prompt template, grading), data keys, chat-template
    choice, budgets, eval temperature, samples per prompt, prompt limit and seeds; flags given here override it."""
    engine_url: list[str] = field(default_factory=list)
    """SGLang server or router URLs (SGLang, sglang-router or agentrl serve). Used instead of an embedded engine."""
    tokenizer: str | None = None
    """Tokenizer folder, hub id or alias (default: --model-path, else the server's tokenizer_path)."""
    chat_template: str | None = None
    """A jinja2 chat template file replacing the tokenizer's."""
    task: list[str] = field(default_factory=list)
    """Tasks as NAME=ENV_ID[:DATA_FILE|SOURCE][,KEY=VALUE...]: KEY=VALUE are env arguments, or the task's
    limit, offset, max_turns, max_response_len, max_context_len (repeatable; see docs/eval.md)."""
    tasks: str | None = None
    """A YAML file listing tasks (name, env, data, env_kwargs, limit, offset, budgets...; see docs/eval.md)."""
    n_samples: int = 1
    """Episodes per held-out prompt (n of avg@n and of the pass@k estimator)."""
    k: str = "1"
    """Comma-separated k values of pass@k, pass^k and maj@k (each at most --n-samples-per-eval-prompt)."""
    temperature: float | None = None
    """Sampling temperature of evaluation episodes (default: 0, greedy, with one sample per prompt; 1.0 with several)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability."""
    top_k: int = -1
    """Top-k sampling: keep the k most likely tokens (-1 or 0: off)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""
    max_response_len: int = 1024
    """Generated tokens per assistant turn."""
    max_context_len: int = 4096
    """Prompt + response tokens per episode; reaching it truncates the episode."""
    max_turns: int | None = None
    """Assistant turns per episode (default: the environment's registered limit)."""
    seed: int = 0
    """Seeds environment resets and sampling (rows without their own seed)."""
    limit: int | None = None
    """At most this many prompts of each held-out set (a task's own limit wins)."""
    concurrency: int = 32
    """Episodes in flight at once, across all groups."""
    episode_timeout: float | None = 600.0
    """Seconds before an episode is stopped and recorded as failed (0 or none: no limit)."""
    success_threshold: float = 1.0
    """An episode succeeds (for pass@k, pass^k, maj@k) when its reward is at least this."""
    out: str = "runs/eval"
    """Folder of the run's outputs. run.json, episodes.jsonl, summary.json, report.md and charts go here."""
    overwrite: bool = False
    """Replace the earlier run in --output-dir. Its episodes are deleted instead of resumed (needed when settings
    changed)."""
    examples: int = 3
    """Example transcripts per task in report.md (best, worst, one not ok)."""
    plots: bool = True
    """Draw the PNG bar charts of report.md."""
    device: str | None = None
    """Device of the embedded engine: cpu, cuda or cuda:N (default: cuda when available)."""
    engine_max_batch_size: int | None = None
    """Requests decoded together (KV-cache slots). Default: the engine's choice."""
    explicit: frozenset[str] = field(default=frozenset(), repr=False, metadata={"derived": True})
    """Names of the settings given on the command line (they win over --config)."""

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(sorted({int(v) for v in self.k.split(",") if v.strip()}))

    @property
    def sampling(self) -> SamplingParams:
        temperature = self.temperature if self.temperature is not None else (0.0 if self.n_samples == 1 else 1.0)
        return SamplingParams(temperature=temperature, top_p=self.top_p, top_k=self.top_k, stop=list(self.stop),
                              seed=self.seed)

    def validate(self, has_training_config: bool = False) -> list[str]:
        problems = []
        if not self.model_path and not self.engine_url:
            problems.append("give --model-path (embedded engine) or --sglang-url (a running server)")
        if not self.task and not self.tasks and not has_training_config:
            problems.append("give at least one --task NAME=ENV_ID[:DATA_FILE], --tasks FILE.yaml, or --config "
                            "RECIPE.yaml (its held-out sets)")
        try:
            ks = self.ks
            if not ks or min(ks) < 1:
                problems.append(f"--k values must be >= 1; got {self.k!r}")
            elif max(ks) > self.n_samples:
                problems.append(f"--k {max(ks)} is more than --n-samples-per-eval-prompt {self.n_samples}; pass@k needs "
                                "n >= k (raise --n-samples-per-eval-prompt or drop that k)")
        except ValueError:
            problems.append(f"--k must be comma-separated integers such as 1,4,8; got {self.k!r}")
        for flag, value in (("--n-samples-per-eval-prompt", self.n_samples), ("--rollout-max-response-len", self.max_response_len),
                            ("--rollout-max-context-len", self.max_context_len), ("--rollout-concurrency", self.concurrency)):
            if value < 1:
                problems.append(f"{flag} must be >= 1; got {value}")
        optional: list[tuple[str, float | None, int]] = [
            ("--eval-max-prompts", self.limit, 1), ("--max-turns", self.max_turns, 1),
            ("--engine-max-batch-size", self.engine_max_batch_size, 1), ("--episode-timeout", self.episode_timeout, 0),
            ("--examples", self.examples, 0)]
        for flag, given, low in optional:
            if given is not None and given < low:
                problems.append(f"{flag} must be >= {low}; got {given}")
        if not 0 <= self.seed < 2**32:  # as training's: reset seeds must be >= 0
            problems.append(f"--seed must be in [0, 2**32); got {self.seed}")
        if self.chat_template is not None and not Path(self.chat_template).expanduser().is_file():
            problems.append(f"--chat-template {self.chat_template}: no such file")
        try:
            self.sampling.validate()
        except ValueError as e:
            problems.append(str(e))
        if not self.out.strip():
            problems.append("--output-dir is an empty path; give a folder for the evaluation")
        elif (Path(self.out).expanduser() / "metrics.jsonl").is_file():  # its summary.json would be replaced
            problems.append(f"--output-dir {self.out} holds a training run (metrics.jsonl); an evaluation needs a "
                            "folder of its own, e.g. " + str(Path(self.out) / "eval"))
        if not problems and self.out:  # made now, so that a path that cannot be a folder stops the run before it loads
            try:
                Path(self.out).expanduser().mkdir(parents=True, exist_ok=True)
            except OSError as e:
                problems.append(f"--output-dir {self.out}: cannot create it ({e.strerror or e})")
        if self.temperature == 0 and self.n_samples > 1:
            log.warning("--eval-temperature 0 with --n-samples-per-eval-prompt %d: greedy episodes of a prompt are alike, so "
                        "pass@k says little beyond pass@1", self.n_samples)
        return problems

    def eval_config(self) -> EvalConfig:
        return EvalConfig(n_samples=self.n_samples, ks=self.ks, sampling=self.sampling, max_turns=self.max_turns,
                          max_context_tokens=self.max_context_len, max_new_tokens_per_turn=self.max_response_len,
                          concurrency=self.concurrency, success_threshold=self.success_threshold,
                          episode_timeout=self.episode_timeout or None, seed=self.seed)

    def settings(self, specs: list[TaskSpec], tasks: list[EvalTask]) -> dict[str, Any]:
        """What decides the episodes: a resumed run must have the same (stored in run.json)."""
        return {
            "model_path": self.model_path, "engine_url": list(self.engine_url),
            "tokenizer": self.tokenizer, "chat_template": self.chat_template,
            "tasks": [{**s.to_dict(), "env": t.env_id, "env_kwargs": t.env_kwargs, "prompts": len(t.rows),
                       "data_sha256": data_fingerprint(s)} for s, t in zip(specs, tasks)],
            "n_samples": self.n_samples,
            "sampling": {k: v for k, v in dataclasses.asdict(self.sampling).items()
                         if k in ("temperature", "top_p", "top_k", "stop", "seed")},
            "max_response_len": self.max_response_len, "max_context_len": self.max_context_len,
            "max_turns": self.max_turns, "seed": self.seed,
        }


# -- command line --------------------------------------------------------------------------------
TABLE = FlagTable(EvalArgs)
DESCRIPTION = ("Evaluate an agent on held-out tasks with the training episode loop: avg@n, unbiased pass@k, pass^k, "
               "maj@k, statuses, turns, tokens, tool calls; a table, summary.json, episodes.jsonl and report.md in "
               "--output-dir. Rerun the same command to resume. `agentrl eval compare A B` compares runs.")


def build_parser():
    return TABLE.parser("agentrl eval", DESCRIPTION, config_file=False)


def parse_args(argv: list[str]) -> EvalArgs:
    args, given, problems = TABLE.parse(argv, prog="agentrl eval", description=DESCRIPTION, config_file=False)
    if problems:
        raise EvalArgsError("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    return dataclasses.replace(args, explicit=frozenset(given))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from agentrl.eval.compare import main as compare_main

        return compare_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "transformers", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = parse_args(argv)
        summary = run(args, command="agentrl eval " + shlex.join(argv))
    except (EvalArgsError, TaskError, SettingsChanged, DataError, ModelNotFoundError, MissingExtra, ConfigError) as e:
        print(f"agentrl eval: {str(e).removesuffix(SKIP_HINT)}", file=sys.stderr)  # no --skip-bad-rows here
        return 2
    except KeyboardInterrupt:
        print(f"\nagentrl eval: interrupted; finished groups are saved in {args.out}/episodes.jsonl. "
              "Rerun the same command to resume.", file=sys.stderr)
        return 130
    print()
    print(report.format_table(summary))
    print(f"\nwrote {args.out}/summary.json, {args.out}/episodes.jsonl, {args.out}/report.md")
    notice = report.timeout_notice(summary["tasks"], args.episode_timeout)
    if notice:
        print(f"\nagentrl eval: {notice}", file=sys.stderr)
    if summary.get("engine_failures"):
        counts = ", ".join(f"{task}: {n}" for task, n in summary["engine_failures"].items())
        print(f"\nagentrl eval: the engine failed some prompts ({counts}); they are not scored above. "
              f"First error: {summary['engine_error']}\nRerun the same command to evaluate them.", file=sys.stderr)
        return 1
    return 0


# -- the run -------------------------------------------------------------------------------------
def load_specs(args: EvalArgs) -> list[TaskSpec]:
    specs = (load_task_file(args.tasks) if args.tasks else []) + [parse_task_arg(t) for t in args.task]
    check_unique(specs)
    return specs


def run(args: EvalArgs, *, engine: Any = None, template: Any = None, command: str | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation and write its outputs; return the summary.

    ``engine``/``template`` replace the ones the arguments name (a test double, an engine the
    caller already holds). Raises :class:`EvalArgsError`, :class:`~agentrl.eval.tasks.TaskError` or
    :class:`~agentrl.eval.store.SettingsChanged` for settings that cannot run.
    """
    args, training = resolve(args)
    problems = args.validate(training is not None)
    if problems and engine is not None:  # an injected engine stands in for --model-path / --sglang-url
        problems = [p for p in problems if not p.startswith("give --model-path")]
    if problems:
        raise EvalArgsError("invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    config = args.eval_config()
    if training is not None and not (args.task or args.tasks):  # the run's held-out sets, read as it read them
        tasks = heldout_tasks(training, args.limit)
        settings = args.settings([], tasks) | {"config": args.config or args.model_path,
                                               "tasks": task_settings(training, tasks)}
    else:
        specs = load_specs(args)
        tasks = [build_task(s, args.limit) for s in specs]
        settings = args.settings(specs, tasks)
    if training is not None:  # environments and seeds as in the run's own evaluation
        config = dataclasses.replace(config, env_kwargs=dict(training.rollout.env_kwargs),
                                     seed=args.seed + HELDOUT_SEED_OFFSET)
        settings |= {"env_kwargs": config.env_kwargs, "env_seed": config.seed,
                     "apply_chat_template": training.data.apply_chat_template}
    plain = training is not None and not training.data.apply_chat_template and not args.chat_template
    store = RunStore(args.out)
    store.prepare(settings, overwrite=args.overwrite)
    release_freed_memory()
    done = store.load_done(args.n_samples)
    todo = sum(1 for t in tasks for r in t.rows if r.index not in done.get(t.name, {}))
    total = sum(len(t.rows) for t in tasks)
    if total - todo:
        log.info("resuming %s: %d of %d prompts already done", args.out, total - todo, total)
    start = time.time()
    results = asyncio.run(_evaluate(args, tasks, config, store, done, todo, engine, template, plain))
    summary = report.summarize({name: r["metrics"] for name, r in results.items()}, ks=config.ks,
                               n_samples=config.n_samples,
                               extra={"settings": settings, "command": command,
                                      "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                      "seconds_this_run": round(time.time() - start, 1),
                                      "success_threshold": config.success_threshold,
                                      "engine_failures": {name: len(r["engine_failures"])
                                                          for name, r in results.items() if r["engine_failures"]},
                                      "engine_error": next((r["engine_failures"][0][1] for r in results.values()
                                                            if r["engine_failures"]), None)})
    report.write_summary(args.out, summary)
    report.write_report(args.out, summary, {name: r["samples"] for name, r in results.items()},
                        examples=args.examples, plots=args.plots, command=command)
    return summary


async def _evaluate(args: EvalArgs, tasks: list[EvalTask], config: EvalConfig, store: RunStore,
                    done: dict, todo: int, engine: Any, template: Any, plain: bool = False) -> dict[str, dict[str, Any]]:
    own_engine = engine is None and todo > 0
    if todo > 0 and (engine is None or template is None):
        longest = max([config.max_context_tokens, *(t.max_context_tokens or 0 for t in tasks)])
        built_engine, built_template = await build_engine_and_template(
            args, need_engine=engine is None, max_seq_len=longest + 8, plain=plain)
        engine = engine or built_engine
        template = template or built_template
    bar = _Progress(todo)

    def on_group(task: EvalTask, row: Any, group: Any) -> None:
        store.append_group(task.name, row.index, group)
        bar.update(task.name, group)

    try:
        return await evaluate(engine, template, tasks, config, on_group=on_group, done=done)
    finally:
        bar.close()
        if own_engine:
            await _close(engine)


async def build_engine_and_template(args: EvalArgs, *, need_engine: bool = True,
                                    max_seq_len: int | None = None, plain: bool = False) -> tuple[Any, Any]:
    """The engine ``--model-path`` / ``--sglang-url`` names, and the chat template of its tokenizer (``plain``: a
    training config's ``--no-apply-chat-template``, message contents one after another)."""
    from agentrl.chat import ChatTemplate
    from agentrl.models import load_tokenizer

    engine: Engine | None = None
    tokenizer_name = args.tokenizer or args.model_path
    if args.engine_url and need_engine:
        from agentrl.engine.base import EngineError
        from agentrl.engine.sglang import SGLangEngine

        engine = SGLangEngine(args.engine_url)
        try:
            await engine.require_health()
        except EngineError as exc:
            await _close(engine)
            raise EvalArgsError(str(exc)) from None
        if tokenizer_name is None:
            info = await engine.get_model_info()
            tokenizer_name = info.get("tokenizer_path") or info.get("model_path")
            log.info("tokenizer from the server: %s", tokenizer_name)
    if tokenizer_name is None:
        raise EvalArgsError("no tokenizer: pass --tokenizer-path (a folder, hub id or alias) for the server's model")
    tokenizer = load_tokenizer(tokenizer_name)
    if need_engine and engine is None:
        from agentrl.engine.embedded import EmbeddedEngine

        assert args.model_path is not None  # EvalArgs.validate: --model-path when there is no --sglang-url
        engine = EmbeddedEngine(args.model_path, tokenizer=tokenizer, device=args.device,
                                max_batch_size=args.engine_max_batch_size,
                                max_seq_len=max_seq_len or args.max_context_len + 8)
    if plain:
        from agentrl.components import PLAIN_TEMPLATE

        return engine, ChatTemplate(tokenizer, PLAIN_TEMPLATE)
    return engine, ChatTemplate(tokenizer, args.chat_template)


async def _close(engine: Any) -> None:
    for name in ("close", "aclose"):
        fn = getattr(engine, name, None)
        if fn is not None:
            result = fn()
            if inspect.isawaitable(result):
                await result
            return


class _Progress:
    """A bar over the prompts still to run, with each task's mean reward so far."""

    def __init__(self, total: int):
        self.bar = progress(total, "eval", unit="prompt")
        self.rewards: dict[str, list[float]] = {}

    def update(self, task: str, group: Any) -> None:
        rewards = self.rewards.setdefault(task, [])
        rewards += [s.reward for s in group.samples]
        self.bar.set_postfix({name: f"{sum(r) / len(r):.3f}" for name, r in self.rewards.items()}, refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()
