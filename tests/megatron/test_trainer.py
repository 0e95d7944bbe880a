"""MegatronTrainer against the torch backend: same batch, same loss, same metrics, same weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from megatron_helpers import random_hf_model, random_samples

from agentrl import algo
from agentrl.train.base import TrainConfig
from agentrl.train.batch import RolloutBatch

VOCAB = 256


class _Tok:
    """Stands in for a tokenizer: the trainers only read the pad id and save it with exports."""

    pad_token_id = 0

    def save_pretrained(self, path) -> None:
        pass


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, cpu_cuda_shim):
    """A random Qwen3 (q/k norm, tied embeddings) saved as an HF folder."""
    path = tmp_path_factory.mktemp("hf-qwen3")
    model = random_hf_model("qwen3", vocab_size=VOCAB, seed=7)
    with torch.no_grad():  # keep logits moderate so PPO ratios stay near 1
        for p in model.parameters():
            p.mul_(0.3)
    model.save_pretrained(path)
    return str(path)


def _torch_trainer(path: str, cfg: TrainConfig):
    from transformers import AutoModelForCausalLM

    from agentrl.train.torch_trainer import TorchTrainer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return TorchTrainer(model, cfg, tokenizer=_Tok(), device="cpu", dtype=torch.float32)


def _megatron_trainer(path: str, cfg: TrainConfig, **kw):
    from agentrl.train.megatron.trainer import MegatronTrainer, MegatronTrainerConfig

    return MegatronTrainer(path, cfg, MegatronTrainerConfig(attention="sdpa", **kw), tokenizer=_Tok())


def _batch(trainer, samples, kl: bool) -> RolloutBatch:
    b = RolloutBatch.from_samples(samples)
    b.old_logprobs = trainer.compute_logprobs(b)
    if kl:
        b.ref_logprobs = trainer.compute_ref_logprobs(b)
    b.advantages = algo.get_advantage_estimator("grpo")(b.rewards, b.group_ids, b.loss_mask)
    return b


CFG = TrainConfig(lr=3e-3, max_tokens_per_gpu=48, use_kl_loss=True, kl_loss_coef=0.1, entropy_coef=0.01,
                  eps_clip_high=0.28, rollout_temperature=0.9)


def test_same_loss_metrics_and_logprobs_as_the_torch_backend(parallel, hf_folder):
    """Padded micro-batches split as the torch backend splits them: every metric agrees."""
    samples = random_samples(6, VOCAB, seed=1)
    ref = _torch_trainer(hf_folder, CFG)
    meg = _megatron_trainer(hf_folder, CFG, optimizer="torch", pack_sequences=False)
    bt, bm = _batch(ref, samples, kl=True), _batch(meg, samples, kl=True)
    torch.testing.assert_close(bm.old_logprobs, bt.old_logprobs, atol=2e-5, rtol=1e-5)
    for _ in range(2):
        mt, mm = ref.train_step(bt), meg.train_step(bm)
        assert sorted(mt) == sorted(mm)
        for key in mt:
            assert mm[key] == pytest.approx(mt[key], rel=1e-4, abs=2e-5), key
        assert mm["train/loss"] != 0.0
    torch.testing.assert_close(meg.compute_logprobs(bm), ref.compute_logprobs(bt), atol=5e-5, rtol=1e-4)


def test_megatron_optimizer_and_packing_give_the_torch_step(parallel, hf_folder):
    """megatron-core DDP + distributed optimizer, packed micro-batches: same loss and update."""
    samples = random_samples(6, VOCAB, seed=2)
    ref = _torch_trainer(hf_folder, CFG)
    meg = _megatron_trainer(hf_folder, CFG, optimizer="megatron", pack_sequences=True)
    assert type(meg.optimizer).__name__ == "MegatronOptimizer"
    bt, bm = _batch(ref, samples, kl=True), _batch(meg, samples, kl=True)
    for _ in range(2):
        mt, mm = ref.train_step(bt), meg.train_step(bm)
        # another split of the batch into micro-batches: the metrics do not depend on it
        for key in ("train/loss", "train/pg_loss", "train/grad_norm", "train/kl_loss", "train/entropy",
                    "train/ppo_kl", "train/pg_clipfrac", "train/ratio_mean", "train/ratio_max", "train/lr"):
            assert mm[key] == pytest.approx(mt[key], rel=1e-4, abs=2e-5), key
    torch.testing.assert_close(meg.compute_logprobs(bm), ref.compute_logprobs(bt), atol=5e-5, rtol=1e-4)
    hf_names = dict(ref.weights())
    pushed = dict(meg.weights())
    assert sorted(pushed) == sorted(k for k in hf_names if k != "lm_head.weight")
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, hf_names[name], atol=1e-5, rtol=1e-4, msg=name)


def test_dr_grpo_length_norm_gives_the_torch_step(parallel, hf_folder):
    """seq_mean_token_sum_norm: every term divides by max_length_norm, so packed micro-batches
    (another split than the torch backend's) give the same loss and update."""
    cfg = dataclasses.replace(CFG, loss_aggregation="seq_mean_token_sum_norm", max_length_norm=64.0)
    # (samples without token 2: the HF embedding has padding_idx = pad_token_id, 2 in the tiny
    # configs, and gives that row no gradient; megatron-core's embedding does)
    samples = random_samples(6, VOCAB, seed=9)
    assert not any(2 in s.tokens for s in samples)
    ref = _torch_trainer(hf_folder, cfg)
    meg = _megatron_trainer(hf_folder, cfg, optimizer="torch", pack_sequences=True)
    bt, bm = _batch(ref, samples, kl=True), _batch(meg, samples, kl=True)
    for _ in range(2):
        mt, mm = ref.train_step(bt), meg.train_step(bm)
        for key in mt:
            assert mm[key] == pytest.approx(mt[key], rel=1e-4, abs=2e-5), key
    torch.testing.assert_close(meg.compute_logprobs(bm), ref.compute_logprobs(bt), atol=5e-5, rtol=1e-4)


def test_one_step_without_old_logprobs_uses_its_own_forward_pass(parallel, hf_folder):
    cfg = dataclasses.replace(CFG, use_kl_loss=False)
    samples = random_samples(4, VOCAB, seed=6)
    with_old, without_old = _megatron_trainer(hf_folder, cfg), _megatron_trainer(hf_folder, cfg)
    assert not without_old.needs_old_logprobs(1) and without_old.needs_old_logprobs(2)
    a = _batch(with_old, samples, kl=False)
    b = _batch(without_old, samples, kl=False)
    b.old_logprobs = None
    ma, mb = with_old.train_step(a), without_old.train_step(b)
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], rel=1e-5, abs=1e-6), key
    with pytest.raises(ValueError, match="old_logprobs"):
        without_old.train_step(b, num_steps=2)


def test_reference_logprobs_stay_at_the_initial_policy(parallel, hf_folder):
    samples = random_samples(4, VOCAB, seed=3)
    meg = _megatron_trainer(hf_folder, CFG)
    batch = _batch(meg, samples, kl=True)
    torch.testing.assert_close(batch.ref_logprobs, batch.old_logprobs)
    meg.train_step(batch)
    after = meg.compute_logprobs(batch)
    assert (after - batch.old_logprobs).abs().max() > 1e-3
    torch.testing.assert_close(meg.compute_ref_logprobs(batch), batch.ref_logprobs)


def test_save_and_load_resume_the_same_run(parallel, hf_folder, tmp_path):
    samples = random_samples(4, VOCAB, seed=4)
    cfg = dataclasses.replace(CFG, use_kl_loss=False, lr_warmup_steps=3)
    a = _megatron_trainer(hf_folder, cfg, optimizer="megatron")
    batch = _batch(a, samples, kl=False)
    a.train_step(batch)
    a.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model" / "model.safetensors").exists()
    b = _megatron_trainer(hf_folder, cfg, optimizer="megatron")
    b.load(tmp_path / "ckpt")
    torch.testing.assert_close(b.compute_logprobs(batch), a.compute_logprobs(batch))
    ma, mb = a.train_step(batch), b.train_step(batch)
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(b.compute_logprobs(batch), a.compute_logprobs(batch))


def test_critic_matches_the_torch_value_model(parallel, hf_folder):
    samples = random_samples(4, VOCAB, seed=5)
    cfg = dataclasses.replace(CFG, use_kl_loss=False, use_critic=True, critic_lr=1e-2)
    ref = _torch_trainer(hf_folder, cfg)
    meg = _megatron_trainer(hf_folder, cfg, optimizer="torch", pack_sequences=False)
    batches = []
    for trainer in (ref, meg):
        b = _batch(trainer, samples, kl=False)
        b.values = trainer.compute_values(b)
        assert b.values.shape == b.loss_mask.shape and b.values.abs().max() == 0  # zero-initialised head
        b.returns = b.advantages + 0.5
        batches.append(b)
    mt, mm = ref.train_step(batches[0]), meg.train_step(batches[1])
    assert mm["train/value_loss"] == pytest.approx(mt["train/value_loss"], rel=1e-5)
    after_t, after_m = ref.compute_values(batches[0]), meg.compute_values(batches[1])
    assert after_m.abs().max() > 0
    torch.testing.assert_close(after_m, after_t, atol=1e-5, rtol=1e-4)


def test_configuration_errors_are_clear(parallel, hf_folder):
    with pytest.raises(ValueError, match="LoRA"):
        _megatron_trainer(hf_folder, TrainConfig(lora_rank=8))
    meg = _megatron_trainer(hf_folder, TrainConfig())
    batch = RolloutBatch.from_samples(random_samples(2, VOCAB))
    with pytest.raises(ValueError, match="advantages"):
        meg.train_step(batch)
    with pytest.raises(RuntimeError, match="use_kl_loss"):
        meg.compute_ref_logprobs(batch)
