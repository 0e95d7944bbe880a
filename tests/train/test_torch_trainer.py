import math
import random

import pytest
import torch

from agentrl import algo
from agentrl.testing import tiny_model_path
from agentrl.train import RolloutBatch, TrainConfig, micro_batches
from agentrl.train.torch_trainer import TorchTrainer
from agentrl.types import Sample


def _samples(n=6, seed=0, vocab=1000):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, r = rng.randint(3, 9), rng.randint(2, 12)
        mask = [1] * r
        if r > 4:  # an observation in the middle
            mask[2:4] = [0, 0]
        out.append(Sample(prompt_ids=[rng.randrange(3, vocab) for _ in range(p)],
                          response_ids=[rng.randrange(3, vocab) for _ in range(r)], loss_mask=mask,
                          rollout_logprobs=[-1.0 if m else 0.0 for m in mask], reward=float(i % 2), group_id=i // 3))
    return out


@pytest.fixture(scope="module")
def model_path():
    return tiny_model_path("qwen2")


def _reference_logprobs(model, sample):
    ids = torch.tensor([sample.tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return lp[-len(sample.response_ids):] * torch.tensor(sample.loss_mask)


def test_batched_left_padded_logprobs_match_single_sequences(model_path):
    trainer = TorchTrainer(model_path, TrainConfig(max_tokens_per_gpu=40))
    samples = _samples()
    batch = RolloutBatch.from_samples(samples)
    assert len(micro_batches(samples, 40)) > 1  # several micro-batches of mixed lengths
    lp = trainer.compute_logprobs(batch)
    for i, s in enumerate(samples):
        expected = _reference_logprobs(trainer.model, s)
        torch.testing.assert_close(lp[i, batch.width - len(s.response_ids):], expected, atol=1e-5, rtol=1e-5)
        assert (lp[i, : batch.width - len(s.response_ids)] == 0).all()


def test_two_steps_change_every_parameter_and_metrics_are_finite(model_path):
    trainer = TorchTrainer(model_path, TrainConfig(lr=1e-2, max_tokens_per_gpu=64, use_kl_loss=True,
                                                   kl_loss_coef=0.1, entropy_coef=0.01))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for step in range(2):
        batch = RolloutBatch.from_samples(_samples(seed=step))
        batch.old_logprobs = trainer.compute_logprobs(batch)
        batch.ref_logprobs = trainer.compute_ref_logprobs(batch)
        batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
        metrics = trainer.train_step(batch, num_steps=1 + step)
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        if step == 0:  # on-policy: ratio exactly 1, nothing clipped
            assert metrics["train/ratio_max"] == pytest.approx(1.0, abs=1e-5)
            assert metrics["train/pg_clipfrac_low"] == 0 and metrics["train/pg_clipfrac_high"] == 0
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    assert trainer.steps == 3


def test_train_step_needs_advantages(model_path):
    trainer = TorchTrainer(model_path, TrainConfig())
    with pytest.raises(ValueError, match="advantages"):
        trainer.train_step(RolloutBatch.from_samples(_samples(2)))


def test_lora_and_critic(model_path):
    trainer = TorchTrainer(model_path, TrainConfig(lr=1e-2, lora_rank=4, use_kl_loss=True, kl_loss_coef=0.1,
                                                   use_critic=True))
    batch = RolloutBatch.from_samples(_samples())
    batch.old_logprobs = trainer.compute_logprobs(batch)
    batch.ref_logprobs = trainer.compute_ref_logprobs(batch)
    torch.testing.assert_close(batch.old_logprobs, batch.ref_logprobs)  # LoRA starts at the base
    batch.values = trainer.compute_values(batch)
    adv, ret = algo.compute_gae(algo.place_rewards_at_turn_ends(batch.rewards, batch.loss_mask), batch.values,
                                batch.loss_mask)
    batch.advantages, batch.returns = adv, ret
    metrics = trainer.train_step(batch)
    assert math.isfinite(metrics["train/value_loss"])
    names = dict(trainer.weights())
    assert "model.embed_tokens.weight" in names and not any("lora" in n for n in names)
    assert trainer.compute_logprobs(batch).ne(batch.ref_logprobs).any()


def test_single_step_without_old_logprobs_equals_recomputed(model_path):
    """One optimiser step may take the old logprobs from its own forward pass: same update."""
    results = []
    for recompute in (True, False):
        trainer = TorchTrainer(model_path, TrainConfig(lr=1e-2, max_tokens_per_gpu=64))
        assert not trainer.needs_old_logprobs(1) and trainer.needs_old_logprobs(2)
        batch = RolloutBatch.from_samples(_samples())
        if recompute:
            batch.old_logprobs = trainer.compute_logprobs(batch)
        batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
        metrics = trainer.train_step(batch)
        results.append((metrics, [p.detach().clone() for p in trainer.model.parameters()]))
    (m1, p1), (m2, p2) = results
    assert m2["train/ratio_max"] == 1.0 and abs(m1["train/loss"] - m2["train/loss"]) < 1e-5
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    fresh = RolloutBatch.from_samples(_samples())
    fresh.advantages = batch.advantages
    with pytest.raises(ValueError, match="need batch.old_logprobs"):
        trainer.train_step(fresh, num_steps=2)


@pytest.mark.gpu
def test_cuda_training_passes_run_no_cudnn_attention():
    """Micro-batches rarely repeat a shape, and cuDNN's attention builds a graph per shape: the
    trainer's forward and backward run on SDPA's other kernels, and leave the global flag as found."""
    trainer = TorchTrainer(tiny_model_path("qwen2"), TrainConfig(max_tokens_per_gpu=64), device="cuda",
                           dtype=torch.bfloat16)
    batch = RolloutBatch.from_samples(_samples(seed=3))
    batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
    was = torch.backends.cuda.cudnn_sdp_enabled()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        batch.old_logprobs = trainer.compute_logprobs(batch)
        metrics = trainer.train_step(batch)
    names = {e.key for e in prof.key_averages()}
    assert not [n for n in names if "cudnn_attention" in n], names
    assert any("flash" in n or "efficient" in n for n in names), names
    assert all(math.isfinite(v) for v in metrics.values())
    assert torch.backends.cuda.cudnn_sdp_enabled() is was
