"""Weights from a trainer into ``agentrl serve`` by SGLang's in-memory path, over gloo:
``/init_weights_update_group`` then ``/update_weights_from_distributed`` bucket by bucket. Afterwards the
server's greedy tokens and their logprobs equal the trainer's model's.

One test sends from a trainer in this process; the slow one from rank 0 of a Megatron TP 2 trainer
group (two rank actors on a local Ray cluster), whose full tensors are gathered bucket by bucket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [1, 2, 3, 4]
NEW = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "agentrl.cli", "serve", "--model-path", "tiny-qwen2", "--host",
                             "127.0.0.1", "--port", str(port), "--device", "cpu", "--engine-dtype", "float32"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


def _served(url: str) -> tuple[list[int], list[float]]:
    body = {"input_ids": PROMPT, "return_logprob": True,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": NEW, "ignore_eos": True}}
    meta = httpx.post(url + "/generate", json=body, timeout=120).json()["meta_info"]
    entries = meta["output_token_logprobs"]
    return [int(e[1]) for e in entries], [float(e[0]) for e in entries]


def _greedy(model: torch.nn.Module) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs under ``model`` (full forward each step: no cache to differ)."""
    ids, lps = list(PROMPT), []
    with torch.no_grad():
        for _ in range(NEW):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            tok = int(lp.argmax())
            ids.append(tok)
            lps.append(float(lp[tok]))
    return ids[len(PROMPT):], lps


def _embedded(model: torch.nn.Module) -> tuple[list[int], list[float]]:
    """What the served engine gives with ``model``'s weights, in this process."""
    import asyncio

    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine

    async def run():
        async with EmbeddedEngine(model, max_batch_size=2, max_seq_len=64) as engine:
            out = await engine.generate(PROMPT, SamplingParams(temperature=0.0, max_new_tokens=NEW, ignore_eos=True))
            return list(out.token_ids), [float(x) for x in out.logprobs]

    return asyncio.run(run())


def _moved(model: torch.nn.Module) -> None:
    """Move the weights far from the server's initial ones (so a sync that did nothing cannot pass)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def test_sync_from_a_trainer_into_agentrl_serve(server):
    from agentrl.cluster.weight_broadcast import destroy_update_group, init_update_group, push_to_servers
    from agentrl.train.torch_trainer import TorchTrainer

    trainer = TorchTrainer("tiny-qwen2", device="cpu")
    _moved(trainer.model)
    want = _greedy(trainer.model)
    before = _served(server)
    assert before[0] != want[0]
    port = _free_port()
    body = {"master_address": "127.0.0.1", "master_port": port, "rank_offset": 1, "world_size": 2, "backend": "gloo"}
    answer: list = []
    joining = threading.Thread(target=lambda: answer.append(httpx.post(server + "/init_weights_update_group",
                                                                       json=body, timeout=120)))
    joining.start()
    pg = init_update_group("127.0.0.1", port, 0, 2, backend="gloo")
    joining.join()
    assert answer[0].status_code == 200 and answer[0].json()["success"], answer[0].text
    stats = push_to_servers(trainer.weights(), [server], pg, bucket_bytes=2 * 1024**2, weight_version="5")
    assert stats["buckets"] > 1  # the tiny model is ~13 MB in float32: several buckets
    tokens, logprobs = _served(server)
    assert tokens == want[0]
    assert logprobs == pytest.approx(want[1], abs=5e-5)  # a full forward per token vs the engine's KV cache
    assert (tokens, logprobs) == _embedded(trainer.model)  # the same engine on the trainer's weights: bit for bit
    assert httpx.get(server + "/get_weight_version").json()["weight_version"] == "5"
    assert httpx.post(server + "/destroy_weights_update_group", json={}).json()["success"]
    destroy_update_group(pg)


def test_update_without_a_group_is_a_400(server):
    r = httpx.post(server + "/update_weights_from_distributed", json={"names": [], "dtypes": [], "shapes": []})
    assert r.status_code == 400 and "call /init_weights_update_group first" in r.json()["message"]


def test_in_memory_weights_form_the_group_once_and_again_when_the_servers_change():
    """What the engine pool hands the servers with --engine sglang and a trainer group: the first sync forms
    SGLang's weight-update group, later ones only send; a server replaced by the pool (a restart, same URL)
    makes the next sync leave the old group and form a new one; the clients learn the version they hold."""
    import asyncio

    from agentrl.cluster.engine_pool import CollectiveWeights
    from agentrl.cluster.sglang_servers import InMemoryWeightsTrainer

    calls: list[tuple] = []

    class Group:
        def connect_servers(self, urls, *, group_name, backend):
            calls.append(("connect", urls, group_name, backend))

        def disconnect_servers(self):
            calls.append(("disconnect",))

        def update_servers(self, version, *, bucket_bytes):
            calls.append(("send", version, bucket_bytes))

    class Server:
        def __init__(self, url):
            self.url, self.weight_version = url, 0

        def note_weight_version(self, version):
            self.weight_version = version

    a, b, b_again = Server("http://a:1"), Server("http://b:1"), Server("http://b:1")
    trainer = InMemoryWeightsTrainer(Group(), backend="gloo", bucket_bytes=7)
    assert isinstance(trainer.weights(), CollectiveWeights)

    async def syncs():
        await trainer.weights().push_to([a, b], 1)
        await trainer.weights().push_to([a, b], 2)
        await trainer.weights().push_to([a, b_again], 3)

    asyncio.run(syncs())
    assert calls == [("connect", ["http://a:1", "http://b:1"], "agentrl_weights_1", "gloo"), ("send", 1, 7),
                     ("send", 2, 7), ("disconnect",),
                     ("connect", ["http://a:1", "http://b:1"], "agentrl_weights_2", "gloo"), ("send", 3, 7)]
    assert (a.weight_version, b.weight_version, b_again.weight_version) == (3, 2, 3)


@pytest.mark.slow
def test_sync_from_a_tensor_parallel_trainer_group_into_agentrl_serve(server, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("megatron.core")
    from agentrl.cluster.trainer_group import TrainerGroup
    from agentrl.config import parse_args
    from agentrl.models import load_model

    _ray_init(ray)
    try:
        cfg = parse_args(["--model-path", "tiny-qwen2", "--trainer", "megatron", "--actor-num-gpus-per-node", "2",
                          "--tensor-model-parallel-size", "2", "--lr", "0.5"])
        group = TrainerGroup.spawn(cfg, options=[{"num_cpus": 0.5}] * 2)
        try:
            group.train_step(_batch(group.tokenizer))  # a large step: the weights move away from the server's
            full = ray.get(group.weights())  # the gathered HF-named tensors, from rank 0
            group.connect_servers([server])
            metrics = group.update_servers(version=3, bucket_bytes=2 * 1024**2)
        finally:
            group.close()
    finally:
        ray.shutdown()
    assert metrics["perf/weight_sync_buckets"] > 1 and metrics["perf/weight_sync_gb_per_s"] > 0
    model = load_model("tiny-qwen2", with_tokenizer=False).float()
    model.load_state_dict(full, strict=False)
    tokens, logprobs = _served(server)
    want = _greedy(model)
    assert tokens == want[0]
    assert logprobs == pytest.approx(want[1], abs=5e-5)
    assert (tokens, logprobs) == _embedded(model)


@pytest.mark.slow
def test_a_trainer_group_run_sends_its_weights_to_agentrl_serve_in_memory(server, tmp_path, monkeypatch):
    """train.py with --engine sglang --sglang-url (agentrl serve) and a Megatron TP 2 group: each sync goes
    through /update_weights_from_distributed (no HF folder per sync), the step metrics carry its seconds and
    GB/s, and afterwards the server's greedy tokens are those of the last synced weights (the HF export of
    the checkpoint of the same step)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("megatron.core")
    from agentrl.config import parse_args
    from agentrl.loop import train
    from agentrl.models import load_model

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    _ray_init(ray)
    try:
        train(parse_args(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout",
                          "3", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--global-batch-size", "4",
                          "--rollout-max-response-len", "8", "--eval-max-prompts", "2", "--max-tokens-per-gpu", "2048",
                          "--lr", "1e-2", "--entropy-coef", "0.1", "--no-gradient-checkpointing", "--no-dynamic-sampling",
                          "--engine", "sglang", "--sglang-url", server, "--use-ray", "--trainer", "megatron",
                          "--actor-num-gpus-per-node", "2", "--tensor-model-parallel-size", "2",
                          "--update-weight-buffer-size", str(2 * 1024**2), "--output-dir", str(out),
                          "--save", str(out / "ckpt"), "--save-interval", "1"]))
    finally:
        ray.shutdown()
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    synced = [r for r in rows if "perf/weight_sync_s" in r]
    assert len(synced) >= 2 and all(r["perf/weight_sync_gb_per_s"] > 0 for r in synced)
    assert not (out / "weights").exists()  # no HF folder per sync
    version = int(httpx.get(server + "/get_weight_version").json()["weight_version"])
    assert version >= 2
    model = load_model(str(out / "ckpt" / f"rollout_{version:05d}" / "model"), with_tokenizer=False).float()
    tokens, logprobs = _served(server)
    assert (tokens, logprobs) == _embedded(model)


def _ray_init(ray) -> None:
    """A local 2-CPU Ray cluster whose workers carry megatron-core's CPU shim (tests/megatron)."""
    shim = ROOT / "tests" / "megatron"
    path = os.pathsep.join([str(shim), str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "megatron_cpu_shim.install", "env_vars": {"PYTHONPATH": path}})


def _batch(tokenizer):
    from agentrl.train.batch import RolloutBatch
    from agentrl.types import Sample

    samples = [Sample(prompt_ids=[1, 2, 3], response_ids=[4 + i, 5, 6], loss_mask=[1, 1, 1], reward=float(i),
                      rollout_logprobs=[-1.0] * 3) for i in range(4)]
    batch = RolloutBatch.from_samples(samples)
    batch.advantages = torch.tensor([[-1.5] * 3, [-0.5] * 3, [0.5] * 3, [1.5] * 3])
    return batch
