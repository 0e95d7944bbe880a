"""FSDP2 data parallelism of the torch trainer against the single-process trainer.

Two processes under torchrun run this file as a script (``_worker``): gloo on CPUs, NCCL on two
GPUs (``multigpu``). Each rank builds ``TorchTrainer(data_parallel=True)``; rank 0 also builds
the single-process trainer and both see the same batch. Rank 0 writes the largest differences
(logprobs, metrics, gradients, weights, exported model, resume) to ``result.json``.

GPU check (two GPUs)::

    python -m pytest tests/train/test_fsdp.py -m multigpu -x -q
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 256


class _Tok:
    """What the trainer needs of a tokenizer (a pad id, and saving next to the model)."""

    pad_token_id = 0

    def save_pretrained(self, path) -> None:
        (Path(path) / "tokenizer.txt").write_text("test tokenizer\n")


def _make_model(path: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from agentrl.testing import tiny_config

    config = tiny_config("qwen2", vocab_size=VOCAB)  # tiny-qwen2's shape (tied embeddings)
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)
    return path


def _samples(seed: int, n: int = 8):
    """Uneven lengths (one long episode), so ranks get different micro-batch counts."""
    from agentrl.types import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = int(torch.randint(2, 8, (1,), generator=g))
        r = 60 if i == 0 else int(torch.randint(1, 10, (1,), generator=g))
        mask = [1] * r
        if r > 4:  # an observation inside the response
            mask[2:4] = [0, 0]
        out.append(Sample(prompt_ids=torch.randint(1, VOCAB, (p,), generator=g).tolist(),
                          response_ids=torch.randint(1, VOCAB, (r,), generator=g).tolist(), loss_mask=mask,
                          rollout_logprobs=[-1.0 if m else 0.0 for m in mask], reward=float(i % 2),
                          group_id=i // 3))
    return out


# -- the worker (one rank) ------------------------------------------------------------------------
def _max_diff(a, b) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _dict_diff(a: dict, b: dict) -> float:
    if sorted(a) != sorted(b):
        raise AssertionError(f"different keys: {sorted(set(a) ^ set(b))}")
    return max(_max_diff(a[k], b[k]) for k in a)


def _metric_diffs(a: dict, b: dict, prefix: str) -> dict:
    if sorted(a) != sorted(b):
        raise AssertionError(f"different metrics: {sorted(set(a) ^ set(b))}")
    return {f"{prefix}{k}": abs(a[k] - b[k]) / max(1.0, abs(b[k])) for k in a}


def _case(name: str, model_path: str, cfg_kw: dict, dtype, out: Path, result: dict) -> None:
    from agentrl import algo
    from agentrl.train import RolloutBatch, TrainConfig
    from agentrl.train.distributed import full_tensor, get_rank, get_world_size
    from agentrl.train.torch_trainer import TorchTrainer

    main = get_rank() == 0
    critic = cfg_kw.get("use_critic", False)
    dp = TorchTrainer(model_path, TrainConfig(**cfg_kw, gradient_checkpointing=True), tokenizer=_Tok(),
                      dtype=dtype, data_parallel=True)
    one = TorchTrainer(model_path, TrainConfig(**cfg_kw), tokenizer=_Tok(), dtype=dtype) if main else None
    r: dict[str, float] = {}

    def prepare(trainer, batch):
        batch.old_logprobs = trainer.compute_logprobs(batch)
        batch.ref_logprobs = trainer.compute_ref_logprobs(batch)
        if critic:
            batch.values = trainer.compute_values(batch)
            batch.advantages, batch.returns = algo.compute_gae(
                algo.place_rewards_at_turn_ends(batch.rewards, batch.loss_mask), batch.values, batch.loss_mask)
        else:
            batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids,
                                                                    batch.loss_mask)
        return batch

    # padding passes and split micro-batches really happen with this batch (and its two halves)
    full = RolloutBatch.from_samples(_samples(0))
    plans = [dp._micro_batches(full.select(idx)) for idx in ([0, 1, 2, 3], [4, 5, 6, 7], range(8))]
    r["padding_passes"] = float(dp.dp.sum(torch.tensor(sum(not live for p in plans for _, live in p))))
    r["micro_batches"] = len(plans[-1])

    b_dp = prepare(dp, RolloutBatch.from_samples(_samples(0)))
    m_dp = dp.train_step(b_dp, num_steps=1 if critic else 2)
    grads = {n: full_tensor(p.grad) for n, p in dp.model.named_parameters() if p.grad is not None}
    w_dp = {k: v.clone() for k, v in dp.weights()}
    after_dp = dp.compute_logprobs(b_dp)
    dp.save(out / f"{name}-dp")
    if main:
        b_one = prepare(one, RolloutBatch.from_samples(_samples(0)))
        for key in ("old_logprobs", "ref_logprobs", "values", "advantages"):
            if getattr(b_one, key) is not None:
                r[f"{key}_max_diff"] = _max_diff(getattr(b_dp, key), getattr(b_one, key))
        m_one = one.train_step(b_one, num_steps=1 if critic else 2)
        r.update(_metric_diffs(m_dp, m_one, "metric_diff/"))
        r.update({f"metric/{k}": v for k, v in m_one.items()})
        grads_one = {n: p.grad for n, p in one.model.named_parameters() if p.grad is not None}
        r["grads_max_diff"] = _dict_diff(grads, grads_one)
        r["grads_max"] = max(float(g.abs().max()) for g in grads_one.values())
        r["weights_max_diff"] = _dict_diff(w_dp, {k: v.clone() for k, v in one.weights()})
        r["logprobs_after_max_diff"] = _max_diff(after_dp, one.compute_logprobs(b_one))
        one.save(out / f"{name}-one")

    # exact resume: a second step, then back to the checkpoint and the same second step again
    first = dp.train_step(prepare(dp, RolloutBatch.from_samples(_samples(1))))
    dp.load(out / f"{name}-dp")
    again = dp.train_step(prepare(dp, RolloutBatch.from_samples(_samples(1))))
    r.update(_metric_diffs(again, first, "resume_diff/"))
    dp.dp.barrier()  # the single-process checkpoint (optimiser state by position) is written
    dp.load(out / f"{name}-one")
    from_one = dp.train_step(prepare(dp, RolloutBatch.from_samples(_samples(1))))
    r.update(_metric_diffs(from_one, first, "from_one_diff/"))

    # fewer samples than ranks: rank 1 only runs padding passes
    dp.load(out / f"{name}-one")
    tiny = dp.train_step(prepare(dp, RolloutBatch.from_samples(_samples(2, n=1))))
    if main:
        one.load(out / f"{name}-one")
        r.update(_metric_diffs(tiny, one.train_step(prepare(one, RolloutBatch.from_samples(_samples(2, n=1)))),
                               "one_sample_diff/"))
    try:  # ranks handed different batches fail together, with a clear message
        dp.compute_logprobs(RolloutBatch.from_samples(_samples(5 + get_rank())))
        r["mismatch_detected"] = 0.0
    except RuntimeError as e:
        r["mismatch_detected"] = float("different batches" in str(e))
    r["world"] = get_world_size()
    result[name] = r


def _worker() -> None:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    from agentrl.train.distributed import get_rank, init_distributed, teardown_distributed

    init_distributed()
    dtype = getattr(torch, args.dtype)
    out, result = Path(args.out), {}
    base = dict(lr=1e-2, adam_eps=1e-3, clip_grad=0.05, max_tokens_per_gpu=24)
    _case("full", args.model, dict(base, use_kl_loss=True, kl_loss_coef=0.1, entropy_coef=0.01, kl_loss_type="k3"),
          dtype, out, result)
    _case("lora", args.model, dict(base, lora_rank=4, use_kl_loss=True, kl_loss_coef=0.1, use_critic=True,
                                   loss_aggregation="seq_mean_token_mean"), dtype, out, result)
    if get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result, indent=1))
    teardown_distributed()


# -- the tests ----------------------------------------------------------------------------------------
def _run(tmp_path: Path, *args: str, timeout: int = 600) -> dict:
    model = _make_model(tmp_path / "model")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), "--model", str(model), "--out", str(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads((tmp_path / "result.json").read_text())


def _check(result: dict, tol: float) -> None:
    for name, r in result.items():
        assert r["world"] == 2 and r["mismatch_detected"] == 1.0
        assert r["padding_passes"] > 0 and r["micro_batches"] > 1, r  # the uneven-split path ran
        diffs = {k: v for k, v in r.items() if k.endswith("_max_diff") or k.startswith(("metric_diff/", "resume_diff/", "from_one_diff/", "one_sample_diff/"))}
        assert len(diffs) > 50, sorted(r)
        bad = {k: v for k, v in diffs.items() if not v <= tol}
        assert not bad, (name, bad)
        assert r["grads_max"] > 1e-4, r  # gradients that would show a wrong scale
        assert r["metric/train/grad_norm"] > 0.05, r  # clipping was active (clip_grad=0.05)
        assert all(math.isfinite(v) for v in r.values())


def _check_export(tmp_path: Path, tol: float) -> None:
    """The HF folder rank 0 exported equals the single-process export; the single-process
    trainer resumes from the sharded checkpoint (optimiser state keyed by name)."""
    from safetensors.torch import load_file

    from agentrl.train import TrainConfig
    from agentrl.train.torch_trainer import TorchTrainer

    for name in ("full", "lora"):
        a = load_file(tmp_path / f"{name}-dp" / "model" / "model.safetensors")
        b = load_file(tmp_path / f"{name}-one" / "model" / "model.safetensors")
        assert _dict_diff(a, b) <= tol, (name, _dict_diff(a, b))
    trainer = TorchTrainer(str(tmp_path / "model"), TrainConfig(lr=1e-2), tokenizer=_Tok(), device="cpu")
    trainer.load(tmp_path / "full-dp")
    saved = torch.load(tmp_path / "full-one" / "trainer.pt", weights_only=False)["optimizer"]["state"]
    for i, p in enumerate(trainer.optimizer.param_groups[0]["params"]):
        assert _max_diff(trainer.optimizer.state[p]["exp_avg"], saved[i]["exp_avg"]) <= tol


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the CPU variant; see test_two_gpus_match_one")
    _check(_run(tmp_path), tol=1e-5)
    _check_export(tmp_path, tol=1e-5)


@pytest.mark.gpu
@pytest.mark.multigpu
def test_two_gpus_match_one(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    _check(_run(tmp_path), tol=1e-3)  # float32 on both sides (no mixed precision)
    _check_export(tmp_path, tol=1e-3)


@pytest.mark.gpu
@pytest.mark.multigpu
def test_two_gpus_bf16_mixed_precision_stays_close(tmp_path):
    """bf16 compute with float32 master weights vs. one bf16 GPU: same losses to bf16 accuracy."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    result = _run(tmp_path, "--dtype", "bfloat16")
    for name, r in result.items():
        assert r["padding_passes"] > 0
        assert r["metric_diff/train/loss"] < 0.05 and r["old_logprobs_max_diff"] < 0.1, (name, r)
        assert all(math.isfinite(v) for v in r.values())


if __name__ == "__main__":
    _worker()
