"""The trainer group on CUDA GPUs (NCCL): the CPU tests of ``test_trainer_group.py`` and
``test_server_weight_sync.py`` where the ranks are GPUs.

Run on a machine with 2 GPUs (4 for TP 2 x DP 2; 3 where an engine or a server needs a GPU of its own,
since NCCL takes one rank per GPU), from the repository root, with Ray installed::

    python -m pytest tests/cluster/test_trainer_group_gpu.py -m multigpu -q -p no:cacheprovider

Each test skips with the number of GPUs it needs where there are fewer. The parity runs are colocated
(the engine on rank 0's GPU, its memory released during training), the NCCL syncs disaggregated. Float32 on both sides
(``--megatron-dtype float32 --engine-dtype float32``) except the torch trainer, which computes in
bf16 on CUDA. Tolerances: 1e-3 relative for the Megatron layouts (on GPUs cuBLAS picks kernels by
shape, so a tensor-parallel matmul sums in another order than the whole one, more so than on the
CPU; ``tests/megatron/test_parallel.py`` uses the same bound); 5% on the first step's loss for FSDP2
in bf16 against one bf16 GPU (``tests/train/test_fsdp.py``'s bound; the later steps sample from
weights that differ by bf16 rounding, so their rollouts may differ).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.multigpu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "3",
       "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--num-steps-per-rollout", "1",
       "--global-batch-size", "4", "--rollout-max-response-len", "8", "--eval-max-prompts", "2", "--eval-interval", "3",
       "--max-tokens-per-gpu", "2048", "--lr", "1e-2", "--engine-max-batch-size", "8", "--no-gradient-checkpointing",
       "--no-dynamic-sampling", "--entropy-coef", "0.1", "--use-ray", "--colocate", "--engine-dtype", "float32"]
MEGATRON = ["--trainer", "megatron", "--megatron-optimizer", "megatron", "--megatron-dtype", "float32"]
LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2": [],
    "tp2-sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
}
SKIP = ("perf/", "time", "rollout/time", "rollout/tokens_per_s", "engine/")


def _need(gpus: int, why: str = "") -> None:
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} CUDA GPUs{why}")


@pytest.fixture(scope="module")
def gpu_ray():
    _need(2)
    ray = pytest.importorskip("ray")
    pytest.importorskip("megatron.core")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_gpus=torch.cuda.device_count(), include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def _run(tmp_path: Path, name: str, *flags: str) -> dict[int, dict]:
    from agentrl.config import parse_args
    from agentrl.loop import train

    os.chdir(ROOT)
    out = tmp_path / name
    train(parse_args([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt"), *flags]))
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _close(a: dict[int, dict], b: dict[int, dict], rtol: float) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        for key in sorted(a[step].keys() | b[step].keys()):
            x, y = a[step].get(key), b[step].get(key)
            if key.startswith(SKIP):
                continue
            if isinstance(x, float) and isinstance(y, float) and math.isfinite(x):
                assert y == pytest.approx(x, rel=rtol, abs=rtol * 1e-1), (step, key, x, y)
            else:
                assert x == y, (step, key)


@pytest.fixture(scope="module")
def one_gpu_megatron(gpu_ray, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("one"), "megatron-1", *MEGATRON)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_megatron_on_two_gpus_matches_one(one_gpu_megatron, tmp_path, layout):
    two = _run(tmp_path, layout, *MEGATRON, "--actor-num-gpus-per-node", "2", *LAYOUTS[layout])
    _close(one_gpu_megatron, two, rtol=1e-3)
    assert all(two[s]["perf/weight_sync_s"] > 0 for s in (2, 3))  # the sync before each later step, timed


def test_megatron_tp2_dp2_on_four_gpus_matches_one(one_gpu_megatron, tmp_path):
    _need(4)
    four = _run(tmp_path, "tp2dp2", *MEGATRON, "--actor-num-gpus-per-node", "4", "--tensor-model-parallel-size", "2")
    _close(one_gpu_megatron, four, rtol=1e-3)


def test_torch_fsdp2_on_two_gpus_stays_close_to_one(gpu_ray, tmp_path):
    one = _run(tmp_path, "torch-1", "--trainer", "torch")
    two = _run(tmp_path, "torch-2", "--trainer", "torch", "--actor-num-gpus-per-node", "2")
    assert sorted(one) == sorted(two) == [0, 1, 2, 3]
    assert two[1]["train/loss"] == pytest.approx(one[1]["train/loss"], rel=0.05, abs=5e-3)
    assert all(math.isfinite(two[s]["train/grad_norm"]) and two[s]["train/grad_norm"] > 0 for s in (1, 2, 3))


def _tp2_group(extra: list[str]):
    from agentrl.cluster.placement import create_placement, plan_placement
    from agentrl.cluster.trainer_group import TrainerGroup
    from agentrl.config import parse_args

    cfg = parse_args(["--model-path", "tiny-qwen2", "--prompt-data", "x", "--use-ray", *MEGATRON, "--lr", "0.5",
                      "--actor-num-gpus-per-node", "2", "--tensor-model-parallel-size", "2", "--no-colocate",
                      "--engine-dtype", "float32", "--engine-max-batch-size", "4", "--rollout-max-context-len", "128",
                      *extra])
    placement = create_placement(plan_placement(1, colocate=False, use_gpu=True, trainer_ranks=2))
    return cfg, placement, TrainerGroup.spawn(cfg, options=[placement.trainer_options(r) for r in range(2)])


def _batch(tokenizer):
    from agentrl.train.batch import RolloutBatch
    from agentrl.types import Sample

    samples = [Sample(prompt_ids=[1, 2, 3], response_ids=[4 + i, 5, 6], loss_mask=[1, 1, 1], reward=float(i),
                      rollout_logprobs=[-1.0] * 3) for i in range(4)]
    batch = RolloutBatch.from_samples(samples)
    batch.advantages = torch.tensor([[-1.5] * 3, [-0.5] * 3, [0.5] * 3, [1.5] * 3])
    return batch


def test_nccl_sync_from_tp2_group_into_an_engine_equals_the_gathered_weights(gpu_ray):
    """Two trainer ranks on GPUs 0 and 1, the embedded engine on GPU 2, ``--ray-weight-sync nccl``: after each
    sync every tensor of the engine's model equals the group's gathered one exactly."""
    import asyncio

    from agentrl.cluster.build import build_engine_pool

    _need(3, " (two trainer ranks and the engine; NCCL takes one rank per GPU)")
    cfg, placement, group = _tp2_group(["--ray-weight-sync", "nccl"])

    def engine_state(actor_self):
        return {k: v.detach().to("cpu") for k, v in actor_self.engine.model.state_dict().items()}

    async def main():
        pool = build_engine_pool(cfg, placement)
        seen = []
        for version in (1, 2):
            metrics = group.train_step(_batch(group.tokenizer))
            assert await pool.update_weights(group.weights(), version=version) == version
            engine = await pool.engines[0].actor.__ray_call__.remote(engine_state)
            seen.append((engine, await group.actor.state_dict.remote(), metrics))
        await pool.close()
        return seen

    try:
        seen = asyncio.run(main())
        after = group.train_step(_batch(group.tokenizer))
    finally:
        group.close()
        placement.remove()
    for engine, gathered, _ in seen:
        for name, t in gathered.items():
            assert torch.equal(engine[name], t), name
    assert after["perf/weight_sync_gb_per_s"] > 0


@pytest.fixture
def gpu_server():
    """``agentrl serve`` of tiny-qwen2 in float32 on the third GPU."""
    import httpx

    _need(3, " (two trainer ranks and the server; NCCL takes one rank per GPU)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "agentrl.cli", "serve", "--model-path", "tiny-qwen2", "--host",
                             "127.0.0.1", "--port", str(port), "--engine-dtype", "float32"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"agentrl serve exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def test_nccl_sync_from_tp2_group_into_agentrl_serve(gpu_ray, gpu_server):
    """``/update_weights_from_distributed`` over NCCL from rank 0 of a TP 2 group: the server's greedy tokens
    equal those of the trainer's gathered weights, their logprobs within 1e-4 (a full forward per token here,
    the engine's KV cache there)."""
    import httpx

    from agentrl.models import load_model

    ray = gpu_ray
    _, placement, group = _tp2_group([])
    try:
        group.train_step(_batch(group.tokenizer))
        full = ray.get(group.weights())
        group.connect_servers([gpu_server], backend="nccl")
        metrics = group.update_servers(version=3, bucket_bytes=2 * 1024**2)
    finally:
        group.close()
        placement.remove()
    assert metrics["perf/weight_sync_buckets"] > 1 and metrics["perf/weight_sync_gb_per_s"] > 0
    model = load_model("tiny-qwen2", with_tokenizer=False).float().cuda()
    model.load_state_dict(full, strict=False)
    prompt, ids, want = [1, 2, 3, 4], [1, 2, 3, 4], []
    with torch.no_grad():
        for _ in range(6):
            lp = torch.log_softmax(model(torch.tensor([ids], device="cuda")).logits[0, -1].float(), -1)
            ids.append(int(lp.argmax()))
            want.append(float(lp[ids[-1]]))
    body = {"input_ids": prompt, "return_logprob": True,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": 6, "ignore_eos": True}}
    entries = httpx.post(gpu_server + "/generate", json=body, timeout=120).json()["meta_info"]["output_token_logprobs"]
    assert [int(e[1]) for e in entries] == ids[len(prompt):]
    assert [float(e[0]) for e in entries] == pytest.approx(want, abs=1e-4)
