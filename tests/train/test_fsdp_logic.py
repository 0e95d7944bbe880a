"""The data-parallel bookkeeping of the torch trainer, in one process (fast).

The two-process FSDP2 runs are in ``test_fsdp.py``. Here: the balanced split of a batch over
ranks, equal micro-batch counts, the merging of metrics, and the property data parallelism
rests on: one optimiser step gives the same gradient and metrics however the batch is cut
into micro-batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl import algo
from agentrl.train import RolloutBatch, TrainConfig, micro_batches
from agentrl.train.distributed import (
    DataParallel,
    decoder_layers,
    init_distributed,
    keyed_by_name,
    pad_micro_batches,
    split_by_tokens,
)
from agentrl.train.torch_trainer import TorchTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_fsdp beside this file, any import mode
from test_fsdp import VOCAB, _make_model, _samples, _Tok  # noqa: E402


@given(st.lists(st.integers(1, 200), min_size=1, max_size=40), st.integers(1, 8))
def test_split_by_tokens_is_a_balanced_partition(lengths, world):
    parts = split_by_tokens(lengths, world)
    assert len(parts) == world
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in p) for p in parts]
    # LPT: the heaviest rank carries at most the ideal share plus one sample
    assert max(loads) <= sum(lengths) / world + max(lengths)
    if len(lengths) >= world:
        assert all(parts)
    assert parts == split_by_tokens(lengths, world)  # every rank computes the same split


@settings(max_examples=50)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=20), st.integers(1, 12), st.integers(8, 100))
def test_pad_micro_batches_reaches_the_count_within_the_budget(lengths, extra, budget):
    class S:
        def __init__(self, n):
            self.tokens = [0] * n

    batches = micro_batches([S(n) for n in lengths], budget)
    count = len(batches) + extra
    plan = pad_micro_batches(batches, count, lengths, filler=0)
    assert len(plan) == count
    live = [idx for idx, ok in plan if ok]
    assert sorted(i for idx in live for i in idx) == list(range(len(lengths)))  # each row once
    assert all(idx == [0] for idx, ok in plan if not ok)
    for idx in live:  # splitting never makes a micro-batch bigger
        assert len(idx) == 1 or len(idx) * max(lengths[i] for i in idx) <= budget
    assert len(live) == min(count, len(lengths))


def test_data_parallel_needs_a_process_group():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    assert init_distributed().world_size == 1  # outside torchrun: a world of one, nothing initialised
    with pytest.raises(RuntimeError, match="torchrun"):
        DataParallel()
    with pytest.raises(RuntimeError, match="init_distributed"):
        TorchTrainer("unused-model", TrainConfig(), data_parallel=True)


def test_keyed_by_name():
    assert keyed_by_name({"state": {}, "param_groups": [{"params": ["model.embed_tokens.weight"]}]})
    assert not keyed_by_name({"state": {}, "param_groups": [{"params": [0, 1]}]})
    assert not keyed_by_name(None)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(_make_model(tmp_path_factory.mktemp("fsdp") / "model"))


def test_decoder_layers_of_plain_and_lora_models(model_path):
    trainer = TorchTrainer(model_path, TrainConfig(lora_rank=2), tokenizer=_Tok(), device="cpu")
    layers = decoder_layers(trainer.model)
    assert [type(m).__name__ for m in layers] == ["Qwen2DecoderLayer"] * 2
    assert layers[0] is trainer.model.get_base_model().model.layers[0]


@pytest.mark.parametrize("mode, max_length", [("seq_mean_token_mean", None), ("seq_mean_token_sum_norm", 64.0)])
def test_one_step_does_not_depend_on_the_micro_batch_split(model_path, mode, max_length):
    """What splitting over ranks relies on: the same update and metrics for any micro-batching
    (sequence modes: a per-episode denominator, and for Dr. GRPO's a constant length shared by
    the policy, KL and entropy terms; token_mean runs in test_fsdp.py)."""
    results = []
    for budget in (16, 100_000):
        cfg = TrainConfig(lr=1e-2, adam_eps=1e-3, max_tokens_per_gpu=budget, loss_aggregation=mode,
                          max_length_norm=max_length, use_kl_loss=True, kl_loss_coef=0.1, entropy_coef=0.01)
        trainer = TorchTrainer(model_path, cfg, tokenizer=_Tok(), device="cpu")
        batch = RolloutBatch.from_samples(_samples(0))
        assert (len(micro_batches(batch.samples, budget)) > 1) == (budget < 1000)
        batch.ref_logprobs = trainer.compute_ref_logprobs(batch)
        batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
        metrics = trainer.train_step(batch)
        results.append((metrics, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    (m_small, p_small), (m_one, p_one) = results
    assert sorted(m_small) == sorted(m_one)
    for k in m_one:
        assert m_small[k] == pytest.approx(m_one[k], rel=1e-5, abs=1e-6), k
    for n in p_one:
        torch.testing.assert_close(p_small[n], p_one[n], atol=1e-6, rtol=1e-5)
    assert VOCAB == trainer.model.config.vocab_size
