"""Async training end to end on the CPU: generation of rollout k+1 overlaps step k, staleness is
bounded and measured, checkpoints hold the data position before the prefetched rollout, and
Ctrl-C finishes the step, saves a checkpoint and stops."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentrl.async_loop import drop_stale
from agentrl.config import parse_args
from agentrl.loop import train
from agentrl.types import Group, Sample

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--rollout-batch-size", "2",
       "--n-samples-per-prompt", "4", "--rollout-max-response-len", "8", "--lr", "1e-3", "--eval-max-prompts", "1",
       "--engine-max-batch-size", "8", "--custom-rm-path", "tests/_resume_reward.py:reward"]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_drop_stale_keeps_whole_groups_within_the_bound():
    def group(i, *versions):
        return Group(i, [Sample(group_id=i, weight_versions=list(v)) for v in versions])

    groups = [group(0, [5], [4, 5]), group(1, [5], [3]), group(2, [])]  # group 2 generated nothing
    kept, dropped, ages = drop_stale(groups, version=5, max_staleness=1)
    assert [g.group_id for g in kept] == [0, 2] and dropped == 1 and sorted(ages) == [0, 1]


def test_async_run_overlaps_bounds_staleness_and_checkpoints_the_data_position(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    train(parse_args([*TOY, "--num-rollout", "3", "--max-staleness", "1", "--use-tis", "--output-dir", str(out),
                      "--save", str(out / "ckpt"), "--save-interval", "2"]))
    steps = [r for r in _rows(out) if "perf/step_time" in r]
    assert [r["perf/weight_version"] for r in steps] == [1, 2, 3]
    assert [r["async/staleness_max"] for r in steps] == [0.0, 1.0, 1.0]  # k+1 was sampled by the weights before step k
    assert all(r["async/dropped_stale"] == 0 and r["rollout/groups_kept"] == 2 for r in steps)
    assert steps[1]["async/overlap_s"] > 0 and "train/tis_weight_mean" in steps[1]
    assert all(s["async/generate_s"] >= s["async/overlap_s"] for s in steps)
    assert (out / "timing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # step, wait, train, generation
    # when rollout 2 was saved the producer had drawn rollout 3's prompts: the checkpoint must not count them
    state = json.loads((out / "ckpt" / "rollout_00002" / "state.json").read_text())
    assert (state["sampler"]["epoch"], state["sampler"]["offset"]) == (0, 2 * 2)
    assert state["next_rollout"] == 2 and state["weight_version"] == 2


def test_async_run_with_in_flight_weight_updates_counts_carried_turns(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    train(parse_args([*TOY, "--num-rollout", "3", "--max-staleness", "1", "--use-tis", "--in-flight-weight-updates",
                      "--output-dir", str(out), "--save", str(out / "ckpt")]))
    steps = [r for r in _rows(out) if "perf/step_time" in r]
    assert [r["perf/weight_version"] for r in steps] == [1, 2, 3]
    assert all(r["async/resumed_turns"] == 0 and r["async/staleness_max"] <= 1 for r in steps)
    assert all("async/carried_turns" in r and r["rollout/groups_kept"] == 2 for r in steps)


@pytest.mark.gpu
def test_async_run_on_cuda_with_a_confined_trainer_and_in_flight_updates(tmp_path, monkeypatch):
    """The trainer thread on a green-context stream of half the SMs (autograd, optimizer and the
    weight sync included), the engine decoding beside it with in-flight weight updates."""
    from agentrl.utils.sm_share import sm_count

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    train(parse_args([*TOY, "--device", "cuda", "--num-rollout", "3", "--max-staleness", "1", "--use-tis",
                      "--trainer-sms", str(sm_count("cuda") // 2), "--in-flight-weight-updates",
                      "--output-dir", str(out), "--save", str(out / "ckpt")]))
    steps = [r for r in _rows(out) if "perf/step_time" in r]
    assert [r["perf/weight_version"] for r in steps] == [1, 2, 3]
    assert all(r["async/resumed_turns"] == 0 and r["async/staleness_max"] <= 1 for r in steps)
    assert all(math.isfinite(r["train/loss"]) for r in steps)


def test_ctrl_c_in_process_finishes_the_step_and_saves(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"

    def press_ctrl_c_after_the_first_step():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "metrics.jsonl").exists() and len(_rows(out)) >= 2:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    presser = threading.Thread(target=press_ctrl_c_after_the_first_step, daemon=True)
    presser.start()
    train(parse_args([*TOY, "--num-rollout", "50", "--max-staleness", "1", "--output-dir", str(out),
                      "--save", str(out / "ckpt")]))
    presser.join()
    done = len([r for r in _rows(out) if "perf/step_time" in r])
    assert 1 <= done < 50
    state = json.loads((out / "ckpt" / (out / "ckpt" / "latest").read_text() / "state.json").read_text())
    # async: the producer had drawn the next rollout's prompts; the checkpoint points before them
    assert state["next_rollout"] == done and state["sampler"]["offset"] == 2 * done
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was restored


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_resume_continues(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    args = [*TOY, "--num-rollout", "50", "--output-dir", str(out), "--save", str(out / "ckpt")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists() or len(_rows(out)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output  # 128 + SIGINT: stopped early, not finished
    assert "Ctrl-C" in output
    done = len([r for r in _rows(out) if "perf/step_time" in r])
    assert 1 <= done < 50
    ckpt = out / "ckpt" / (out / "ckpt" / "latest").read_text()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["next_rollout"] == done and (ckpt / "trainer.pt").exists()
    resumed = tmp_path / "resumed"
    train(parse_args([*TOY, "--num-rollout", str(done + 1), "--output-dir", str(resumed), "--load", str(out / "ckpt")]))
    assert [r["step"] for r in _rows(resumed) if "perf/step_time" in r] == [done + 1]
def test_trainer_thread_binds_plain_cuda_to_the_current_device(monkeypatch):
    """``--device cuda`` (no index): the trainer thread binds the process's current CUDA device."""
    import torch

    from agentrl.async_loop import _bind_device

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("device", d)))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: ("stream", device))
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: calls.append(s))
    _bind_device("cuda")
    assert calls == [("device", torch.device("cuda", 1)), ("stream", torch.device("cuda", 1))]
    calls.clear()
    _bind_device("cpu")
    assert calls == []


def test_trainer_thread_runs_on_a_confined_stream_with_trainer_sms(monkeypatch):
    import torch

    from agentrl.async_loop import _bind_device
    from agentrl.utils import sm_share

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("device", d)))
    monkeypatch.setattr(sm_share, "confined_stream", lambda device, sms: ("confined", device, sms))
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: calls.append(s))
    _bind_device("cuda:1", 88)
    assert calls == [("device", torch.device("cuda", 1)), ("confined", torch.device("cuda", 1), 88)]


def test_trainer_sms_with_a_cpu_trainer_fails_before_any_rollout(tmp_path, monkeypatch):
    """Caught by the config check; and the stream itself refuses a CPU trainer when asked directly."""
    from types import SimpleNamespace

    from agentrl.async_loop import RolloutStream
    from agentrl.config import ConfigError

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--trainer-sms confines the trainer's kernels"):
        train(parse_args([*TOY, "--num-rollout", "2", "--max-staleness", "1", "--trainer-sms", "8", "--device", "cpu",
                          "--output-dir", str(out), "--save", str(out / "ckpt")]))
    assert not (out / "metrics.jsonl").exists()
    cfg = parse_args([*TOY, "--max-staleness", "1", "--trainer-sms", "8", "--device", "cpu"])
    c = SimpleNamespace(engine=SimpleNamespace(weight_version=0), trainer=SimpleNamespace(device="cpu"), sampler=None)
    with pytest.raises(ValueError, match="needs a CUDA device; got cpu"):
        RolloutStream(c, cfg, 0)


async def test_a_failed_rollout_reaches_the_loop_and_overlapping_ones_still_finish():
    """Rollouts overlap; when one fails, the producer starts no more, the ones running finish, and the
    loop gets the failure itself (not a cancellation) when it asks for that rollout."""
    import asyncio

    from agentrl.async_loop import RolloutStream
    from agentrl.rollout import RolloutResult
    from agentrl.testing import FakeEngine

    started, finished = [], []

    async def generate(next_rows, batch_size, *, max_prompts, first_group_id, sampling_seed, progress=None):
        rollout = first_group_id // 1_000_000
        started.append(rollout)
        await asyncio.sleep(0.05 if rollout == 0 else 0.01)
        if rollout == 1:
            raise RuntimeError("rollout 1 broke")
        finished.append(rollout)
        return RolloutResult(groups=[], dropped={}, metrics={}, prompts_used=0)

    engine = FakeEngine(responder=lambda ids, sampling: [1])  # never asked: generate() above is the rollout
    c = _components(engine, generate)
    cfg = _stream_cfg()
    async with RolloutStream(c, cfg, 0) as stream:
        await stream.next(0)
        assert started == [0, 1]  # rollout 1 ran beside rollout 0 (the bound allows both)
        with pytest.raises(RuntimeError, match="rollout 1 broke"):
            await stream.next(1)
    assert started == [0, 1] and finished == [0]  # rollout 0 finished after 1 failed; nothing new started


def _components(engine, generate):
    """What the builders hand the stream of an async run: the rollout on an InterruptibleEngine."""
    from types import SimpleNamespace

    from agentrl.rollout.async_partial import InterruptibleEngine

    interruptible = InterruptibleEngine(engine)
    return SimpleNamespace(engine=engine, interruptible=interruptible,
                           sampler=SimpleNamespace(state_dict=lambda: {}, next_batch=lambda n: []),
                           rollout=SimpleNamespace(engine=interruptible, generate=generate))


def _stream_cfg(**overrides):
    """A run config of 4 rollouts of one prompt x 4 episodes, staleness 1; ``overrides`` by setting name."""
    from agentrl.config import RunConfig

    cfg = RunConfig(num_rollout=4, rollout_batch_size=1)
    cfg.rollout.n_samples_per_prompt, cfg.filters.over_sampling_factor, cfg.train.use_tis = 4, 1, True
    settings = {"max_staleness": 1, "partial_rollouts": True, "trainer_sms": None, "in_flight_weight_updates": False,
                "next_rollout_at": 1.0, **overrides}
    for name, value in settings.items():
        setattr(cfg.asynchrony if hasattr(cfg.asynchrony, name) else cfg, name, value)
    return cfg


def _counting_rollout(events: list):
    """A fake ``Rollout.generate``: four episodes, one every 10 ms, counted down in ``progress``."""
    import asyncio

    from agentrl.rollout import RolloutResult

    async def generate(next_rows, batch_size, *, max_prompts, first_group_id, sampling_seed, progress=None):
        rollout = first_group_id // 1_000_000
        events.append(("start", rollout))
        progress._add(4)
        try:
            for left in (3, 2, 1, 0):
                await asyncio.sleep(0.01)
                progress._add(-1)
                events.append((rollout, left))
        finally:
            progress._finish()
        return RolloutResult(groups=[], dropped={}, metrics={}, prompts_used=0)

    return generate


@pytest.mark.parametrize("fraction,starts_after", [(1.0, None), (0.5, (0, 2)), (0.0, (0, 0))])
async def test_the_next_rollout_starts_once_the_previous_is_down_to_its_tail(fraction, starts_after):
    from agentrl.async_loop import RolloutStream
    from agentrl.testing import FakeEngine

    events: list = []
    c = _components(FakeEngine(responder=lambda ids, sampling: [1]), _counting_rollout(events))
    async with RolloutStream(c, _stream_cfg(next_rollout_at=fraction, num_rollout=2), 0) as stream:
        await stream.next(0)
        await stream.next(1)
    start = events.index(("start", 1))
    if starts_after is None:  # at once: beside rollout 0 from its start
        assert start == 1
    else:  # right after rollout 0 was down to 4 * fraction unfinished episodes
        assert events[start - 1] == starts_after


async def test_a_producer_that_fails_reaches_the_loop_instead_of_hanging():
    import asyncio

    from agentrl.async_loop import RolloutStream
    from agentrl.testing import FakeEngine

    c = _components(FakeEngine(responder=lambda ids, sampling: [1]), _counting_rollout([]))
    async with RolloutStream(c, _stream_cfg(next_rollout_at="half"), 0) as stream:  # breaks the producer at rollout 1
        await stream.next(0)
        with pytest.raises(TypeError):
            await asyncio.wait_for(stream.next(1), 5)


def test_an_async_stream_needs_the_interruptible_engine_from_the_builders():
    from types import SimpleNamespace

    from agentrl.async_loop import RolloutStream
    from agentrl.testing import FakeEngine

    engine = FakeEngine(responder=lambda ids, sampling: [1])
    c = _components(engine, _counting_rollout([]))
    c.rollout.engine = engine  # the rollout bypasses the wrapper: weight syncs could not interrupt it
    with pytest.raises(ValueError, match="components.interruptible"):
        RolloutStream(c, _stream_cfg(), 0)
    c.interruptible = None
    with pytest.raises(ValueError, match="InterruptibleEngine"):
        RolloutStream(c, _stream_cfg(), 0)
    sync = SimpleNamespace(engine=engine, interruptible=None, sampler=None, rollout=SimpleNamespace(engine=engine))
    assert RolloutStream(sync, _stream_cfg(max_staleness=0), 0).engine is None  # synchronous: no wrapper


def test_the_builders_wrap_the_rollout_engine_only_for_async_runs():
    from agentrl.components import build_interruptible
    from agentrl.testing import FakeEngine

    engine = FakeEngine(responder=lambda ids, sampling: [1])
    assert build_interruptible(_stream_cfg(max_staleness=0), engine) is None
    wrapped = build_interruptible(_stream_cfg(partial_rollouts=False, in_flight_weight_updates=True), engine)
    assert wrapped.engine is engine and (wrapped.resume, wrapped.in_flight) == (False, True)


def test_same_gpu():
    from agentrl.async_loop import _same_gpu

    assert _same_gpu("cuda:0", "cuda:0") is True and _same_gpu("cuda:1", "cuda:0") is False
    assert _same_gpu("cpu", "cuda:0") is None and _same_gpu("cpu", "cpu") is None


def test_max_staleness_0_in_the_async_loop_is_bit_identical_to_the_synchronous_loop(tmp_path, monkeypatch):
    """The async machinery (the producer task, the trainer on its worker thread, the interruptible engine
    around every weight sync, the checkpoint sampler) at bound 0 changes nothing: over 3 rollouts the
    weights and every metric equal the synchronous loop's. Episodes run one at a time (as in
    tests/test_resume.py), so no two requests share an engine step by chance."""
    import functools

    import torch
    from safetensors.torch import load_file

    from agentrl import components, loop
    from agentrl.async_loop import RolloutStream

    monkeypatch.chdir(ROOT)
    args = [*TOY, "--num-rollout", "3", "--rollout-concurrency", "1", "--eval-interval", "0", "--max-staleness", "0",
            "--num-steps-per-rollout", "2", "--save-interval", "1"]
    sync, asynchronous = tmp_path / "sync", tmp_path / "async"
    train(parse_args([*args, "--output-dir", str(sync), "--save", str(sync / "ckpt")]))
    started = []

    def async_stream(*a, **kw):
        stream = RolloutStream(*a, **kw, asynchronous=True)
        started.append(stream)
        return stream

    monkeypatch.setattr(loop, "RolloutStream", async_stream)
    monkeypatch.setattr(components, "build_interruptible", functools.partial(components.build_interruptible,
                                                                             asynchronous=True))
    train(parse_args([*args, "--output-dir", str(asynchronous), "--save", str(asynchronous / "ckpt")]))
    assert started and started[0].asynchronous and started[0].engine is not None and started[0]._producer is not None

    def weights(run, rollout):
        return load_file(run / "ckpt" / f"rollout_{rollout:05d}" / "model" / "model.safetensors")

    for rollout in (1, 2, 3):
        a, b = weights(sync, rollout), weights(asynchronous, rollout)
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a), rollout
    assert any(not torch.equal(weights(sync, 1)[n], a[n]) for n in a)  # and training moved them
    timing = ("perf/", "rollout/time", "rollout/tokens_per_s", "async/")  # seconds, and the async run's own

    def counted(key):  # the engine's counters stay (steps, prefills, tokens); its seconds go
        return key != "time" and not key.startswith(timing) and not (key.startswith("engine/") and key.endswith("_s"))

    rows = [{r["step"]: {k: v for k, v in r.items() if counted(k)} for r in _rows(run)} for run in (sync, asynchronous)]
    assert "engine/decode_steps" in rows[0][1] and "train/loss" in rows[0][1]
    assert sorted(rows[0]) == sorted(rows[1]) == [1, 2, 3]
    for step in rows[0]:
        diff = {k: (rows[0][step].get(k), rows[1][step].get(k)) for k in rows[0][step].keys() | rows[1][step].keys()
                if rows[0][step].get(k) != rows[1][step].get(k)}
        assert not diff, (step, diff)
    steps = [r for r in _rows(asynchronous) if "perf/step_time" in r]
    assert [r["async/staleness_max"] for r in steps] == [0.0] * 3 and all(r["async/dropped_stale"] == 0 for r in steps)
