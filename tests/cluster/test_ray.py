"""The Ray path on a local 2-CPU cluster: the quickstart recipe with two engine actors and one
trainer actor gives the single-process run's metrics, even when an engine actor is killed
mid-rollout; environment workers; SGLang-compatible servers as actors.

All slow (a local Ray cluster plus model-loading actors take a minute on two cores).
"""

import asyncio
import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from agentrl.config import parse_args  # noqa: E402
from agentrl.loop import train  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--config", "recipes/quickstart/config.yaml", "--num-rollout", "3", "--rollout-batch-size", "2",
        "--n-samples-per-prompt", "4", "--rollout-max-response-len", "24", "--eval-max-prompts", "2",
        "--engine-max-batch-size", "8"]
# The recipe's own model (SmolLM2-135M-Instruct). Which requests share a decode step changes the logits in
# the last bits (~1e-7); a real model's next-token distributions are peaked enough that seeded draws do
# not notice, while a random tiny model's are so flat that they sometimes do (docs/scaling.md). The two
# metrics that compare engine and trainer logprobs do move in the last bits.
LOGPROB_LEVEL = ("train/rollout_train_kl", "train/rollout_train_abs_diff")
TIMING = ("perf/", "rollout/time", "rollout/tokens_per_s", "time")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


def _rows(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_quickstart_on_ray_matches_single_process_despite_a_killed_engine(local_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    single, ray_run = tmp_path / "single", tmp_path / "ray"
    train(parse_args([*ARGS, "--output-dir", str(single), "--save", str(single / "ckpt")]))
    train(parse_args([*ARGS, "--output-dir", str(ray_run), "--save", str(ray_run / "ckpt"), "--use-ray",
                      "--num-engines", "2", "--custom-generate-function-path",
                      "tests/cluster/_fault_hooks.py:kill_engine_in_rollout_1"]))
    a, b = _rows(single), _rows(ray_run)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for step in a:
        for key in a[step].keys() | b[step].keys():
            if key.startswith(TIMING) or key.startswith("engine/"):
                continue
            if key in LOGPROB_LEVEL:
                assert b[step][key] == pytest.approx(a[step][key], abs=1e-5), (step, key)
            else:
                assert b[step].get(key) == a[step].get(key), (step, key)
    # every group exactly once, nothing failed, the dead engine was replaced
    for step in (1, 2, 3):
        assert b[step]["rollout/groups_finished"] == b[step]["rollout/groups_kept"] == 2
        assert b[step]["rollout/status_ok"] + b[step]["rollout/status_truncated"] == 1.0
    assert b[1]["engine/failures"] == 0 and b[2]["engine/failures"] == 1 and b[2]["engine/retries"] >= 1
    assert (ray_run / "ckpt" / "rollout_00003" / "model" / "config.json").exists()
    assert not ray.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_killed_engine_actor_is_restarted_in_its_bundle_with_the_current_weights(local_ray):
    import torch

    from agentrl.cluster.build import build_engine_pool
    from agentrl.cluster.placement import create_placement, plan_placement
    from agentrl.engine import SamplingParams
    from agentrl.models import load_model

    cfg = parse_args(["--model-path", "tiny-qwen2", "--prompt-data", "x", "--use-ray", "--num-engines", "2",
                      "--engine-max-batch-size", "4", "--rollout-max-context-len", "128"])
    placement = create_placement(plan_placement(2, colocate=False, use_gpu=False, cpus_per_actor=0.5))
    model = load_model("tiny-qwen2", with_tokenizer=False)
    weights = {k: torch.zeros_like(v) if k.endswith("norm.weight") else v for k, v in model.state_dict().items()}

    async def main():
        pool = build_engine_pool(cfg, placement)
        sampling = SamplingParams(max_new_tokens=6, ignore_eos=True, seed=3)
        before = await pool.generate([1, 2, 3], sampling)
        assert await pool.update_weights(ray.put(weights), version=5) == 5
        after = await pool.generate([1, 2, 3], sampling)
        old = pool.engines[0]
        ray.kill(old.actor, no_restart=True)
        assert await pool.check_health() == ["down", "up"]
        await pool.wait_healthy(timeout=300)
        new = pool.engines[0]
        assert new is not old and await new.actor.weight_version.remote() == 5
        again = await new.generate([1, 2, 3], sampling)  # the new engine samples with the pushed weights
        await pool.close()
        return before, after, again

    try:
        before, after, again = asyncio.run(main())
    finally:
        placement.remove()
    assert again.token_ids == after.token_ids != before.token_ids and again.weight_version == 5


def test_env_workers_run_episodes_and_a_dead_worker_fails_only_its_episodes(local_ray, template):
    from agentrl.cluster.env_pool import RayEnvPool
    from agentrl.data import PromptRow, PromptSampler
    from agentrl.engine import SamplingParams
    from agentrl.rollout import Rollout, RolloutConfig
    from agentrl.testing import FakeEngine

    say = template.tokenizer.encode("apple<|im_end|>", add_special_tokens=False)
    engine = FakeEngine(responder=lambda ids, sp: say, latency=0.3)
    pool = RayEnvPool(1, options={"num_cpus": 0.25})
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=2, sampling=SamplingParams(seed=1)),
                      generate_fn=pool.generate_fn())
    rows = [PromptRow(index=i, prompt="-", env_id="agentrl/Echo-v0", options={"target": "apple"}) for i in range(3)]

    async def run(kill: bool):
        task = asyncio.ensure_future(rollout.generate(PromptSampler(rows, shuffle=False).next_batch, 3))
        if kill:
            await asyncio.sleep(0.15)  # episodes have reset their envs and wait on the engine
            ray.kill(pool.workers[0], no_restart=True)
        return await task

    ok = asyncio.run(run(kill=False))
    assert [s.reward for s in ok.samples] == [1.0] * 6
    hit = asyncio.run(run(kill=True))
    assert hit.dropped.get("drop_failed", 0) >= 1
    failed = [s for g in hit.groups for s in g.samples if s.status == "failed"]
    assert not failed  # kept groups are whole and clean; failed ones were filtered and counted
    assert pool.replaced == 1
    again = asyncio.run(run(kill=False))
    assert [s.reward for s in again.samples] == [1.0] * 6
    pool.close()


def test_weight_broadcast_over_gloo_reaches_every_engine_and_restarts_fall_back(local_ray):
    from agentrl.cluster.build import build_engine_pool
    from agentrl.cluster.placement import create_placement, plan_placement
    from agentrl.cluster.ray_trainer import RayTrainer
    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.models import load_model

    cfg = parse_args(["--model-path", "tiny-qwen2", "--prompt-data", "x", "--use-ray", "--num-engines", "2",
                      "--engine-max-batch-size", "4", "--rollout-max-context-len", "128", "--ray-weight-sync", "gloo"])
    placement = create_placement(plan_placement(2, colocate=False, use_gpu=False, cpus_per_actor=0.5))
    trainer = RayTrainer.spawn(cfg, options=placement.trainer_options(), weight_sync="gloo")

    def scale_norms(actor_self):  # the trainer's weights move away from the engines' initial ones
        for name, p in actor_self.trainer.model.named_parameters():
            if name.endswith("norm.weight"):
                p.data.mul_(0.5)

    ray.get(trainer.actor.__ray_call__.remote(scale_norms))
    sampling = SamplingParams(max_new_tokens=6, ignore_eos=True, seed=3)
    model = load_model("tiny-qwen2", with_tokenizer=False)
    scale_norms(type("A", (), {"trainer": type("T", (), {"model": model})})())

    async def expected():
        async with EmbeddedEngine(model, max_batch_size=2, max_seq_len=64) as local:
            return (await local.generate([1, 2, 3], sampling)).token_ids

    async def main():
        pool = build_engine_pool(cfg, placement)
        before = (await pool.generate([1, 2, 3], sampling)).token_ids
        assert await pool.update_weights(trainer.weights(), version=1) == 1  # forms the group, broadcasts
        outs = [(await e.generate([1, 2, 3], sampling)).token_ids for e in pool.engines]
        ray.kill(pool.engines[1].actor, no_restart=True)
        await pool.check_health()
        await pool.wait_healthy(timeout=300)  # the restarted engine loads version 1 from the object store
        restarted = (await pool.engines[1].generate([1, 2, 3], sampling)).token_ids
        assert pool.engines[1].weight_version == 1
        assert await pool.update_weights(trainer.weights(), version=2) == 2  # the group is formed again
        versions = [await e.actor.weight_version.remote() for e in pool.engines]
        await pool.close()
        return before, outs, restarted, versions

    try:
        before, outs, restarted, versions = asyncio.run(main())
    finally:
        trainer.close()
        placement.remove()
    want = asyncio.run(expected())
    assert outs == [want, want] and restarted == want and want != before and versions == [2, 2]


SERVE = ["{python}", "-m", "agentrl.cli", "serve", "--model-path", "{model}", "--host", "{host}", "--port", "{port}",
         "--max-seq-len", "256", "--device", "cpu"]


def test_sglang_compatible_servers_as_actors_restart_and_load_weights_from_disk(local_ray, tmp_path):
    from agentrl.cluster.engine_pool import EnginePool
    from agentrl.cluster.sglang_servers import DiskWeights, spawn_server
    from agentrl.engine import SamplingParams
    from agentrl.models import load_model

    port = 31000 + (os.getpid() % 1000) * 2
    model = load_model("tiny-qwen2", with_tokenizer=False)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.mul_(0.5)
    model.save_pretrained(tmp_path / "v1")
    sampling = SamplingParams(max_new_tokens=5, ignore_eos=True, seed=7)

    def start(i):
        return spawn_server("tiny-qwen2", i, options={"num_cpus": 0.25}, base_port=port, tp=1, extra_args=[],
                            server_argv=SERVE)

    async def main():
        servers = await asyncio.gather(start(0), start(1))
        pool = EnginePool(servers, factory=start, health_interval=0, restart_backoff=0.01)
        before = (await pool.generate([1, 2, 3], sampling)).token_ids
        assert await pool.update_weights(DiskWeights(str(tmp_path / "v1")), version=1) == 1
        after = [(await s.generate([1, 2, 3], sampling)).token_ids for s in pool.engines]
        old = pool.engines[0]
        ray.kill(old.actor, no_restart=True)  # its server process goes with it
        await asyncio.sleep(1.0)
        outs = await asyncio.gather(*(pool.generate([1, 2, 3], sampling) for _ in range(4)))
        await pool.wait_healthy(timeout=300)
        new = pool.engines[0]
        again = (await new.generate([1, 2, 3], sampling)).token_ids
        await pool.close()
        return before, after, [o.token_ids for o in outs], again, new is not old and new.url == old.url

    before, after, outs, again, same_url = asyncio.run(main())
    assert after[0] == after[1] != before
    assert outs == [after[0]] * 4 and again == after[0] and same_url


def test_async_on_ray_with_in_flight_weight_updates(local_ray, tmp_path, monkeypatch):
    """The flag on engine actors: every group trained on exactly once, none resumed, none older than
    the bound. (On two CPUs training outlasts generation, so no turn is in flight at an update here;
    tests/cluster/test_async_partial.py carries one through an update on the engine itself.)"""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    train(parse_args([*ARGS, "--output-dir", str(out), "--save", str(out / "ckpt"), "--use-ray", "--num-engines", "2", "--max-staleness", "1",
                      "--use-tis", "--in-flight-weight-updates"]))
    steps = [r for step, r in sorted(_rows(out).items()) if "perf/step_time" in r]
    assert [r["perf/weight_version"] for r in steps] == [1, 2, 3]
    assert all(r["rollout/groups_kept"] == 2 and r["async/dropped_stale"] == 0 for r in steps)
    assert all(r["async/resumed_turns"] == 0 and r["async/staleness_max"] <= 1 for r in steps)
