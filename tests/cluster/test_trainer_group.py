"""The trainer as a group of rank actors on a local 2-CPU Ray cluster (gloo): a quickstart-shaped run
(tiny model, three rollouts) with the Megatron trainer at TP 2, PP 2, DP 2 and TP 2 + SP on two ranks,
and with the torch trainer under FSDP2 on two ranks, gives the one-rank run's metrics; TP 2 x DP 2 on
four ranks, once; a killed rank fails the run with one line naming it.

Float32 on the CPU. Tolerance: 1e-5 relative (and 1e-6 absolute for values near zero) on every
metric of ``train/``, ``rollout/`` and ``eval/``; what differs between layouts is the order of the
sums in the collectives. The engine samples with the weights pushed after each step, so equal
rollout metrics over three rollouts also mean the pushed (gathered) weights equal one rank's.

megatron-core needs the test CUDA shim (``tests/megatron/megatron_cpu_shim.py``) in every rank actor:
Ray's ``worker_process_setup_hook`` installs it in each worker process.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from agentrl.config import parse_args  # noqa: E402
from agentrl.loop import train  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tests" / "megatron"
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "3",
       "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--num-steps-per-rollout", "1",
       "--global-batch-size", "4", "--rollout-max-response-len", "8", "--eval-max-prompts", "2", "--eval-interval", "3",
       "--max-tokens-per-gpu", "2048", "--lr", "1e-2", "--engine-max-batch-size", "8", "--no-gradient-checkpointing",
       "--no-dynamic-sampling", "--entropy-coef", "0.1", "--use-ray"]
MEGATRON = ["--trainer", "megatron", "--megatron-optimizer", "megatron"]  # one optimiser for every layout
SKIP = ("perf/", "time", "rollout/time", "rollout/tokens_per_s", "engine/")
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("megatron.core")
    path = os.pathsep.join([str(SHIM), str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "megatron_cpu_shim.install", "env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _run(tmp_path: Path, name: str, *flags: str) -> dict[int, dict]:
    out = tmp_path / name
    train(parse_args([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt"), *flags]))
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _same(a: dict[int, dict], b: dict[int, dict], steps: list[int] = [0, 1, 2, 3]) -> None:  # noqa: B006
    assert sorted(a) == sorted(b) == steps
    for step in a:
        for key in sorted(a[step].keys() | b[step].keys()):
            if key.startswith(SKIP):
                continue
            x, y = a[step].get(key), b[step].get(key)
            if isinstance(x, float) and isinstance(y, float) and math.isfinite(x):
                assert y == pytest.approx(x, rel=RTOL, abs=ATOL), (step, key, x, y)
            else:
                assert x == y, (step, key)
    assert all(a[s]["train/grad_norm"] > 0 for s in steps if s)


@pytest.fixture(scope="module")
def one_rank_megatron(local_ray, tmp_path_factory):
    os.chdir(ROOT)
    return _run(tmp_path_factory.mktemp("one"), "megatron-1", *MEGATRON)


LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2": [],
    "tp2-sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_megatron_on_two_rank_actors_matches_one_rank(one_rank_megatron, tmp_path, layout):
    os.chdir(ROOT)
    two = _run(tmp_path, layout, *MEGATRON, "--actor-num-gpus-per-node", "2", *LAYOUTS[layout])
    _same(one_rank_megatron, two)
    for step in (2, 3):  # the sync after the step before, in the step's metrics
        assert two[step]["perf/weight_sync_s"] > 0 and two[step]["perf/weight_sync_gb_per_s"] > 0, two[step]


def test_megatron_tp2_dp2_on_four_rank_actors_matches_one_rank(one_rank_megatron, tmp_path):
    os.chdir(ROOT)
    four = _run(tmp_path, "tp2dp2", *MEGATRON, "--actor-num-gpus-per-node", "4",
                "--tensor-model-parallel-size", "2")
    _same(one_rank_megatron, four)


def test_torch_trainer_fsdp2_on_two_rank_actors_matches_one_rank(local_ray, tmp_path):
    os.chdir(ROOT)
    one = _run(tmp_path, "torch-1", "--trainer", "torch")
    two = _run(tmp_path, "torch-2", "--trainer", "torch", "--actor-num-gpus-per-node", "2")
    _same(one, two)


def test_a_checkpoint_saved_at_tp2_resumes_at_tp1_and_at_dp2(local_ray, tmp_path):
    """Saved after rollout 2 of a TP 2 run (per-rank shards plus the HF-layout weights and Adam moments), resumed
    at TP 1 and at DP 2: rollouts 3 and 4 give the uninterrupted TP 2 run's metrics (rollout 4's depend on the
    optimiser step of rollout 3, so on the restored moments)."""
    os.chdir(ROOT)
    flags = [*MEGATRON, "--no-use-distributed-optimizer", "--num-rollout", "4"]  # per-parameter state reshards
    whole = _run(tmp_path, "tp2", *flags, "--actor-num-gpus-per-node", "2", "--tensor-model-parallel-size", "2",
                 "--save-interval", "1")
    ckpt = tmp_path / "tp2" / "ckpt" / "rollout_00002"
    layout = json.loads((ckpt / "layout.json").read_text())
    assert layout["tensor_parallel"] == 2 and (ckpt / "optimizer_hf" / "exp_avg.safetensors").is_file()
    for name, more in (("tp1", []), ("dp2", ["--actor-num-gpus-per-node", "2"])):
        resumed = _run(tmp_path, name, *flags, *more, "--load", str(ckpt))
        _same({s: whole[s] for s in (3, 4)}, resumed, steps=[3, 4])


@pytest.mark.parametrize(("layout", "sync"), [("tp2", "object_store"), ("tp2", "gloo"), ("pp2", "gloo"),
                                             ("dp2", "object_store"), ("tp2-sp", "gloo"), ("fsdp2", "gloo")])
def test_engine_weights_after_a_sync_equal_the_groups_gathered_weights(local_ray, layout, sync):
    """A two-rank trainer group -> one embedded-engine actor, through the object store or the gloo broadcast
    group: after each of two syncs every tensor of the engine's model equals the group's gathered one exactly
    (TP: gathered across the tensor-parallel ranks; PP: each stage sends its own layers; FSDP2: the shards
    gathered into full tensors)."""
    import asyncio

    import torch

    from agentrl.cluster.build import build_engine_pool
    from agentrl.cluster.placement import create_placement, plan_placement
    from agentrl.cluster.trainer_group import TrainerGroup

    trainer = ["--trainer", "torch"] if layout == "fsdp2" else [*MEGATRON, *LAYOUTS[layout]]
    cfg = parse_args(["--model-path", "tiny-qwen2", "--prompt-data", "x", "--use-ray", *trainer, "--lr", "0.5",
                      "--actor-num-gpus-per-node", "2", "--ray-weight-sync", sync,
                      "--engine-max-batch-size", "4", "--rollout-max-context-len", "128"])
    placement = create_placement(plan_placement(1, colocate=False, use_gpu=False, cpus_per_actor=0.5, trainer_ranks=2))
    group = TrainerGroup.spawn(cfg, options=[placement.trainer_options(r) for r in range(2)])

    def engine_state(actor_self):
        return {k: v.detach().clone() for k, v in actor_self.engine.model.state_dict().items()}

    async def main():
        pool = build_engine_pool(cfg, placement)
        seen = []
        for version in (1, 2):
            group.train_step(_batch(group.tokenizer))
            assert await pool.update_weights(group.weights(), version=version) == version
            engine = await pool.engines[0].actor.__ray_call__.remote(engine_state)
            gathered = await group.actor.state_dict.remote()
            seen.append((await pool.engines[0].actor.weight_version.remote(), engine, gathered))
        await pool.close()
        return seen

    try:
        seen = asyncio.run(main())
        group.where()  # the other rank's share of the last gather
    finally:
        group.close()
        placement.remove()
    assert [version for version, _, _ in seen] == [1, 2]
    for _, engine, gathered in seen:  # after each sync
        assert set(gathered) <= set(engine)
        for name, t in gathered.items():
            assert torch.equal(engine[name], t), name
    first, second = seen[0][2], seen[1][2]
    assert any(not torch.equal(first[n], second[n]) for n in first)  # the second step moved the weights


def test_more_ranks_than_gpus_is_one_line_and_exit_2_before_loading(local_ray, tmp_path, capsys, monkeypatch):
    from agentrl import train_cli
    from agentrl.cluster import trainer_group

    os.chdir(ROOT)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"GPU": 4.0, "CPU": 2.0})  # a cluster of 4 GPUs
    monkeypatch.setattr(trainer_group.TrainerGroup, "spawn", None)  # nothing may start
    rc = train_cli.main([*TOY, *MEGATRON, "--actor-num-gpus-per-node", "8", "--tensor-model-parallel-size", "2",
                         "--output-dir", str(tmp_path / "o"), "--save", str(tmp_path / "ck")], prog="train.py")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert rc == 2
    assert lines == ["  - 8 trainer ranks (--actor-num-nodes x --actor-num-gpus-per-node) need 8 GPUs; the Ray "
                     "cluster has 4"]


def _batch(tokenizer):
    """Four samples with fixed advantages: a training step without an engine."""
    import torch

    from agentrl.train.batch import RolloutBatch
    from agentrl.types import Sample

    samples = [Sample(prompt_ids=[1, 2, 3], response_ids=[4 + i, 5, 6], loss_mask=[1, 1, 1], reward=float(i),
                      rollout_logprobs=[-1.0] * 3) for i in range(4)]
    batch = RolloutBatch.from_samples(samples)
    batch.advantages = torch.tensor([[-1.5] * 3, [-0.5] * 3, [0.5] * 3, [1.5] * 3])
    return batch


def test_a_killed_rank_fails_the_run_with_one_line_naming_it(local_ray, tmp_path, capsys, monkeypatch):
    from agentrl import train_cli
    from agentrl.cluster.trainer_group import TrainerGroup

    os.chdir(ROOT)
    original, steps = TrainerGroup._get, []

    def kill_rank_1_in_the_second_step(self, refs, what):
        if what == "train_step":
            steps.append(1)
            if len(steps) == 2:  # the step's calls are on their way to every rank
                ray.kill(self.actors[1], no_restart=True)
        return original(self, refs, what)

    monkeypatch.setattr(TrainerGroup, "_get", kill_rank_1_in_the_second_step)
    group = ["--trainer", "torch", "--actor-num-gpus-per-node", "2", "--save", str(tmp_path / "ck"), "--save-interval", "1"]
    rc = train_cli.main([*TOY, *group, "--output-dir", str(tmp_path / "killed")], prog="train.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("train.py: trainer rank 1 of 2 died during train_step"), err[-3:]
    # the last checkpoint (after rollout 1) resumes
    monkeypatch.setattr(TrainerGroup, "_get", original)
    assert (tmp_path / "ck" / "rollout_00001").is_dir() and not (tmp_path / "ck" / "rollout_00002").exists()
    rc = train_cli.main([*TOY, *group, "--load", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "resumed")],
                        prog="train.py")
    assert rc == 0
    assert (tmp_path / "ck" / "rollout_00003").is_dir()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-x"]))
