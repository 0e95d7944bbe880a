"""The training loop: data -> rollout groups -> filters -> advantages -> train -> sync -> eval/checkpoint.

This file is the table of contents of a run; every step is a named function elsewhere.

Example::

    from agentrl.config import parse_args
    from agentrl.loop import train
    summary = train(parse_args(["--config", "recipes/quickstart/config.yaml"]))
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from collections.abc import Callable
from typing import Any

from agentrl.async_loop import Interrupted, RolloutStream, stop_signals
from agentrl.checkpoint import CheckpointError, find_checkpoint, last_checkpoint, read_state, save_checkpoint
from agentrl.cluster.build import build_ray_components
from agentrl.components import (Components, build_components, clear_earlier_run, compute_advantages, output_dir,
                                seed_everything)
from agentrl.data.curriculum import CurriculumSampler
from agentrl.config import ConfigError, RunConfig, to_dict, validate
from agentrl.engine.base import EngineError
from agentrl.eval import evaluate
from agentrl.eval.report import timeout_notice
from agentrl.obs import MetricsLogger, Timer, plot_run, progress
from agentrl.obs.dumper import RolloutDumper
from agentrl.rollout.signal import SignalGuard
from agentrl.sync import sync_weights
from agentrl.train.batch import RolloutBatch
from agentrl.train.sft import train_sft
from agentrl.utils.memory import release_freed_memory

log = logging.getLogger(__name__)


def train(cfg: RunConfig) -> dict[str, Any]:
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    release_freed_memory()
    with stop_signals() as stop_if_signalled:  # Ctrl-C or SIGTERM while loading: stop after that step
        return asyncio.run(_train(cfg, stop_if_signalled))


async def _train(cfg: RunConfig, stop_if_signalled: Callable[[], None] = lambda: None) -> dict[str, Any]:
    seed_everything(cfg.seed)
    if cfg.engine.kind == "sglang" and cfg.engine.sglang_url and not cfg.cluster.use_ray:  # before loading anything
        await _require_servers(cfg.engine.sglang_url)
    clear_earlier_run(cfg)  # --overwrite
    out = output_dir(cfg)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    c = build_ray_components(cfg) if cfg.cluster.use_ray else build_components(cfg)
    stop_if_signalled()
    curriculum = CurriculumSampler(c.sampler, cfg.curriculum) if cfg.curriculum.enabled else None
    if curriculum is not None:  # training rows carry the difficulty the success rate has reached
        c.sampler = curriculum
    guard = SignalGuard(cfg.signal)
    start, version = resume(c, cfg, guard) if cfg.checkpoint.load else (0, 0)
    if cfg.checkpoint.load:
        await sync_weights(c.engine, c.trainer, staging_dir=out / "weights", version=version)
    metrics = MetricsLogger(out, wandb_project=cfg.output.wandb_project if cfg.output.use_wandb else None,
                            run_config=to_dict(cfg), resume_at=start if start > 0 else None)
    try:
        stopped = await _run(c, cfg, metrics, guard, curriculum, start, stop_if_signalled)
    except BaseException as e:  # an error, a full disk, a second Ctrl-C: what was logged still gets its plots
        finish_anyway(c, cfg, metrics, e)
        raise
    return finish(c, cfg, metrics, stopped)


async def _run(c: Components, cfg: RunConfig, metrics: MetricsLogger, guard: SignalGuard,
               curriculum: CurriculumSampler | None, start: int,
               stop_if_signalled: Callable[[], None] = lambda: None) -> dict[str, Any] | None:
    """Evaluate, warm-start, then generate -> train -> sync -> log -> save, rollout after rollout; returns what
    stopped the run early (a Ctrl-C or SIGTERM, see :func:`stopped_by`), None when it ran to the end."""
    out = output_dir(cfg)
    timer = Timer()
    dumps = RolloutDumper(out, c.template.tokenizer, cfg.output.dump_max_samples_per_rollout) \
        if cfg.output.save_debug_rollout_data else None
    if c.eval_tasks and start == 0:
        metrics.log(await run_eval(c, cfg, dumps, step=0), step=0)
    if cfg.sft.data and not cfg.checkpoint.load:  # supervised warm start, then its checkpoint and evaluation
        metrics.log(await warm_start(c, cfg, dumps, guard), step=0)
    bar = progress(cfg.num_rollout, "rollouts", unit="rollout", iterable=range(start, cfg.num_rollout), initial=start)
    stop_if_signalled()  # a signal during the first evaluation or the warm start: stop before the rollouts
    async with RolloutStream(c, cfg, start) as rollouts:  # async: rollout k+1 is generated during step k
        for rollout_id in bar:
            doing(bar, "generating")
            with timer("rollout"):
                result = await rollouts.next(rollout_id)
            if not result.groups and result.metrics.get("rollout/engine_failed") == 1.0:
                raise EngineError(f"rollout {rollout_id}: the engine failed every episode (first: "
                                  f"{result.engine_error}); stopping (--load a checkpoint to go on)")
            step = dict(result.metrics) | guard.observe(result.finished, result.metrics.get("rollout/status_truncated"))
            step |= curriculum.update(result.finished) if curriculum is not None else {}
            batch = RolloutBatch.from_samples(result.samples) if result.groups else None
            if batch is not None:
                steps = train_steps(cfg, len(batch))
                doing(bar, "logprobs")
                with timer("logprobs"):
                    signal = await rollouts.run(prepare_batch, c, cfg, batch, steps)
                step["train/skipped_no_signal"] = float(not signal)  # every advantage 0: nothing to learn
                if signal:
                    doing(bar, "training")
                    with timer("train"):
                        step |= await rollouts.run(c.trainer.train_step, batch, num_steps=steps)
                    doing(bar, "syncing weights")
                    with timer("sync"):
                        step["perf/weight_version"] = await rollouts.sync_weights(out / "weights")
            if dumps is not None:  # every episode, with the advantages and logprobs the step used
                with timer("dump"):
                    await asyncio.to_thread(dumps.write_rollout, rollout_id, result, batch)
            step |= timer.pop()
            if cfg.eval.eval_interval and (rollout_id + 1) % cfg.eval.eval_interval == 0 or rollout_id + 1 == cfg.num_rollout:
                step |= await run_eval(c, cfg, dumps, step=rollout_id + 1) if c.eval_tasks else {}
            metrics.log(step, step=rollout_id + 1)
            doing(bar, None)
            bar.set_postfix(reward=f"{step.get('rollout/reward_mean', float('nan')):.3f}",
                            step_s=f"{step['perf/step_time']:.1f}")
            guard.stop_if_failing()  # every episode of the last few rollouts failed: a reward function, env or tool bug
            stopping = rollouts.stopping  # read once: a signal from here on stops the run after the next step
            if cfg.checkpoint.save and (cfg.checkpoint.save_interval and (rollout_id + 1) % cfg.checkpoint.save_interval == 0
                             or rollout_id + 1 == cfg.num_rollout or stopping):
                doing(bar, "saving")
                save(c, cfg, rollout_id + 1, guard)
                doing(bar, None)
            if stopping and rollout_id + 1 < cfg.num_rollout:  # Ctrl-C or SIGTERM: checkpoint saved, stop here
                return stopped_by(cfg, stopping, rollout_id + 1)
    return None


def doing(bar: Any, phase: str | None) -> None:
    """Name the step's current phase on the rollouts bar (a step can take minutes): ``rollouts (training)``."""
    bar.set_description_str("rollouts" + (f" ({phase})" if phase else ""))


async def warm_start(c: Components, cfg: RunConfig, dumps: RolloutDumper | None, guard: SignalGuard) -> dict[str, Any]:
    """The supervised warm start (:mod:`agentrl.train.sft`) on ``--sft-data``, its weights synced to the engine, its
    checkpoint (``rollout_00000`` in ``--save``) and its held-out evaluation (``sft/eval/...``)."""
    from agentrl.data.demos import ORACLE, demo_samples, load_demos, oracle_demos

    if cfg.sft.data == ORACLE:
        demos = await oracle_demos(c.rollout, c.dataset.rows[: cfg.sft.max_demos])
    else:
        assert cfg.sft.data is not None  # called only with --sft-data
        demos = load_demos(cfg.sft.data)[: cfg.sft.max_demos]
    log.info("warm start: %d demonstrations from %s, %d epoch(s)", len(demos), cfg.sft.data, cfg.sft.epochs)
    step = train_sft(c.trainer, demo_samples(c.template, demos), cfg.sft, seed=cfg.seed,
                     use_kl_loss=cfg.train.use_kl_loss, use_tis=cfg.train.use_tis)
    await sync_weights(c.engine, c.trainer, staging_dir=output_dir(cfg) / "weights")
    if cfg.checkpoint.save:
        save(c, cfg, 0, guard)
    if c.eval_tasks:
        step |= {f"sft/{k}": v for k, v in (await run_eval(c, cfg, dumps, step=0)).items()}
    return step


def rollout_seed(cfg: RunConfig, rollout_id: int) -> int:
    """Sampling seeds derive from the run seed and the rollout index, so a resumed run samples
    exactly what the uninterrupted run would have."""
    return cfg.seed * 1_000_003 + rollout_id * 7_919


def prepare_batch(c: Components, cfg: RunConfig, batch: RolloutBatch, steps: int) -> bool:
    """Advantages, old-policy logprobs (when the trainer cannot take them from its own forward pass),
    reference logprobs and values. Returns False, having computed nothing but the advantages, when the
    step would have no gradient: every advantage 0 and no other term in the loss (no KL, no entropy bonus,
    no critic), e.g. a rollout whose every group had equal rewards."""
    if not cfg.train.use_critic:  # without a critic the advantages need only the rewards
        compute_advantages(batch, cfg)
        if not (batch.advantages is None or batch.advantages.any() or cfg.train.use_kl_loss or cfg.train.entropy_coef):
            return False
    if c.trainer.needs_old_logprobs(steps):
        batch.old_logprobs = c.trainer.compute_logprobs(batch)
    if cfg.train.use_kl_loss:
        batch.ref_logprobs = c.trainer.compute_ref_logprobs(batch)
    if cfg.train.use_critic:
        batch.values = c.trainer.compute_values(batch)
        compute_advantages(batch, cfg)
    return True


def train_steps(cfg: RunConfig, n: int) -> int:
    """Optimiser steps for ``n`` kept episodes (fewer when filters left a short batch)."""
    steps = max(1, min(cfg.num_steps_per_rollout, n // max(cfg.global_batch_size or n, 1)))
    while n % steps:
        steps -= 1
    return steps


async def _require_servers(urls: list[str]) -> None:
    from agentrl.engine.sglang import SGLangEngine

    engine = SGLangEngine(urls)
    try:
        await engine.require_health()
    finally:
        await engine.aclose()


async def run_eval(c: Components, cfg: RunConfig, dumps: RolloutDumper | None = None, step: int = 0) -> dict[str, float]:
    with progress(sum(len(t.rows) for t in c.eval_tasks), "held-out eval", unit="prompt", leave=False) as bar:
        results = await evaluate(c.engine, c.template, c.eval_tasks, c.eval_config,
                                 on_group=lambda task, row, group: bar.update())
    if dumps is not None:
        dumps.write_eval(step, results)
    for name, r in results.items():
        if r["engine_failures"]:  # left out of the metrics, which then cover fewer prompts
            log.warning("eval %s: %d prompt(s) not scored, the engine failed them (first: %s)", name,
                        len(r["engine_failures"]), r["engine_failures"][0][1])
    notice = timeout_notice({name: r["metrics"] for name, r in results.items()}, cfg.rollout.episode_timeout)
    if notice:
        log.warning("held-out evaluation at rollout %d: %s", step, notice)
    return {f"eval/{name}/{k}": v for name, r in results.items() for k, v in r["metrics"].items()} | {
        f"eval/{name}/engine_failures": float(len(r["engine_failures"])) for name, r in results.items()}


def save(c: Components, cfg: RunConfig, next_rollout: int, guard: SignalGuard) -> None:
    assert cfg.checkpoint.save is not None  # called only with --save
    path = save_checkpoint(cfg.checkpoint.save, next_rollout, c.trainer, {
        "next_rollout": next_rollout, "sampler": c.sampler.state_dict(), "signal": guard.state_dict(),
        "weight_version": c.engine.weight_version, "config": to_dict(cfg)})
    log.info("saved checkpoint %s", path)


def resume(c: Components, cfg: RunConfig, guard: SignalGuard) -> tuple[int, int]:
    """Restore trainer, data position, the signal guard and engine weights from ``--load``; return the next
    rollout (0 for the checkpoint of a warm start) and the weight version."""
    assert cfg.checkpoint.load is not None  # called only with --load
    ckpt = find_checkpoint(cfg.checkpoint.load)
    state = read_state(ckpt)
    try:
        c.trainer.load(ckpt)
        c.sampler.load_state_dict(state["sampler"])
        guard.load_state_dict(state.get("signal", {}))
    except (OSError, EOFError, KeyError, TypeError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        # a truncated trainer.pt, a checkpoint of another model, a state.json edited by hand: one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{ckpt}: the training state cannot be loaded ({type(e).__name__}: {first})") from e
    log.info("resuming from %s at rollout %d", ckpt, state["next_rollout"])
    return int(state["next_rollout"]), int(state.get("weight_version", 0))


def stopped_by(cfg: RunConfig, signal_name: str, rollouts: int) -> dict[str, Any]:
    """``summary["stopped"]`` of a run a signal stopped after ``rollouts`` rollouts: the signal, the rollouts done
    of how many, and the checkpoint ``--load`` goes on from (None without ``--save``)."""
    checkpoint = last_checkpoint(cfg.checkpoint.save)
    return {"signal": signal_name, "after_rollout": rollouts, "num_rollout": cfg.num_rollout,
            "checkpoint": str(checkpoint) if checkpoint else None}


def finish(c: Components, cfg: RunConfig, metrics: MetricsLogger, stopped: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json``, the plots and the printed summary (with ``stopped``: what ended the run early)."""
    metrics.close()
    summary = run_summary(metrics.history) | ({"stopped": stopped} if stopped else {})
    (output_dir(cfg) / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = plot_run(metrics, output_dir(cfg))
    print_summary(summary, plots)
    return summary


def finish_anyway(c: Components, cfg: RunConfig, metrics: MetricsLogger, error: BaseException) -> None:
    """:func:`finish` for a run that ``error`` ended; a failure here (the full disk that stopped the run) is one
    warning, the run's own error is what gets reported."""
    if isinstance(error, (Interrupted, KeyboardInterrupt, asyncio.CancelledError)):
        name = error.args[0] if isinstance(error, Interrupted) else "SIGINT"
        stopped = stopped_by(cfg, name, max((r["step"] for r in metrics.history), default=0))
    else:
        stopped = {"error": f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"}
    try:
        finish(c, cfg, metrics, stopped)
    except Exception as e:  # noqa: BLE001 -- the run's error is the one to report
        log.warning("the plots and summary.json of %s could not be written (%s: %s)", output_dir(cfg),
                    type(e).__name__, e)
    finally:
        metrics.close()


def run_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Rollouts, the first and last training reward, and each held-out score before training, after the
    warm start (when there was one) and at the end."""
    evals = [i for i, r in enumerate(history) if any(k.startswith("eval/") for k in r)]
    warm = next((i for i, r in enumerate(history) if any(k.startswith("sft/eval/") for k in r)), None)
    rewards = [r["rollout/reward_mean"] for r in history if r.get("rollout/reward_mean") is not None]
    out: dict[str, Any] = {"rollouts": sum(1 for r in history if "perf/step_time" in r),
                           "reward_first": rewards[0] if rewards else None,
                           "reward_last": rewards[-1] if rewards else None}
    if evals:
        first, last = history[evals[0]], history[evals[-1]]
        if warm is not None and warm > evals[-1]:  # nothing was evaluated after the warm start's own evaluation
            last = {k[4:]: v for k, v in history[warm].items() if k.startswith("sft/eval/")}
        for k in sorted(k for k in last if k.startswith("eval/") and k.endswith(("/success", "/reward_mean"))):
            out[k] = {"before": first.get(k), "after": last.get(k)}
            if warm is not None:
                out[k]["after_warm_start"] = history[warm].get(f"sft/{k}")
    return out


def print_summary(summary: dict[str, Any], plots: list) -> None:
    lines = [f"rollouts: {summary['rollouts']}"]
    if summary["reward_first"] is not None:
        lines.append(f"train reward: {_num(summary['reward_first'])} (first rollout) -> {_num(summary['reward_last'])} (last)")
    for k, v in summary.items():
        if k.startswith("eval/") and v["before"] is not None:
            warm = f"{_num(v['after_warm_start'])} after the warm start -> " if v.get("after_warm_start") is not None else ""
            lines.append(f"held-out {k[5:]}: {_num(v['before'])} before -> {warm}{_num(v['after'])} after")
    lines += [f"plot: {p}" for p in plots]
    print("\n".join(lines), flush=True)


def _num(v: Any) -> str:
    """A summary value: 3 decimals, or ``n/a`` where none was logged (a metric that was not finite)."""
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"
