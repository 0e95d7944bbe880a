"""Sampling, stop strings, buckets and the KV cache of the embedded engine, tested in isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agentrl.engine.embedded.kv_cache import KVCache
from agentrl.engine.embedded.runner import batch_bucket, length_bucket
from agentrl.engine.embedded.sampling import SamplingRows, sample, uniforms


def _rows(n, temperature=1.0, top_p=1.0, top_k=-1, seeds=None, step=0):
    seeds = list(range(n)) if seeds is None else seeds
    return SamplingRows.from_lists(temperature=[temperature] * n, top_p=[top_p] * n, top_k=[top_k] * n, seed=seeds, step=[step] * n)


def test_uniforms_are_uniform_and_depend_on_seed_and_step_only():
    u = uniforms(np.arange(20000, dtype=np.uint64), np.zeros(20000, dtype=np.int64))
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert hist.min() > 1800
    a = uniforms(np.array([7, 7, 8], dtype=np.uint64), np.array([0, 1, 0]))
    assert len(set(a.tolist())) == 3
    assert uniforms(np.array([7], dtype=np.uint64), np.array([1]))[0] == a[1]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_frequencies_follow_softmax_of_logits_over_temperature(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 20000
    ids, logprobs = sample(logits.expand(n, -1).contiguous(), _rows(n, temperature))
    probs = torch.softmax(logits / temperature, -1)
    freq = torch.bincount(ids, minlength=5).float() / n
    assert torch.allclose(freq, probs, atol=0.015)
    assert torch.allclose(logprobs, probs.log()[ids], atol=1e-5)


def test_blocked_inverse_cdf_over_a_large_vocabulary():
    """Vocabularies that split into blocks take the two-level lookup; it must sample the same law."""
    torch.manual_seed(0)
    logits = torch.randn(4096) * 2
    n = 40000
    ids, _ = sample(logits.expand(n, -1).contiguous(), _rows(n))
    freq = torch.bincount(ids, minlength=4096).float() / n
    probs = torch.softmax(logits, -1)
    assert (freq - probs).abs().max() < 0.004
    top = probs.topk(20).indices
    assert (freq[top] - probs[top]).abs().sum() < 0.03


def test_top_k_and_top_p_restrict_the_support_but_not_the_logprobs():
    logits = torch.tensor([3.0, 2.5, 2.0, 0.0, -1.0, -2.0])
    n = 4000
    ids, lp = sample(logits.expand(n, -1).contiguous(), _rows(n, top_k=2))
    assert set(ids.tolist()) == {0, 1}
    assert torch.allclose(lp, torch.log_softmax(logits, -1)[ids])
    probs = torch.softmax(logits, -1)  # 0.50, 0.30, 0.18, ...: top_p=0.7 keeps {0, 1}
    ids, _ = sample(logits.expand(n, -1).contiguous(), _rows(n, top_p=0.7))
    assert set(ids.tolist()) == {0, 1}
    freq0 = (ids == 0).float().mean()
    assert abs(freq0 - probs[0] / probs[:2].sum()) < 0.03
    ids, _ = sample(logits.expand(n, -1).contiguous(), _rows(n, top_p=0.01))
    assert set(ids.tolist()) == {0}


def test_greedy_rows_mixed_with_sampled_rows():
    logits = torch.randn(6, 50)
    rows = SamplingRows.from_lists(temperature=[0, 1, 0, 0.7, 0, 1], top_p=[1, 0.9, 1, 1, 1, 1], top_k=[-1, -1, 5, 3, -1, -1],
                                   seed=[1, 2, 3, 4, 5, 6], step=[0] * 6)
    ids, lp = sample(logits, rows)
    greedy = [0, 2, 4]
    assert ids[greedy].tolist() == logits[greedy].argmax(-1).tolist()
    assert torch.allclose(lp[greedy], torch.log_softmax(logits[greedy], -1).gather(1, ids[greedy, None]).squeeze(1))
    assert torch.allclose(lp[3], torch.log_softmax(logits[3] / 0.7, -1)[ids[3]])
    again, _ = sample(logits, rows)
    assert again.tolist() == ids.tolist()
    # a row's draw does not depend on its batch neighbours
    alone, _ = sample(logits[3:4], SamplingRows.from_lists(temperature=[0.7], top_p=[1], top_k=[3], seed=[4], step=[0]))
    assert alone.item() == ids[3].item()


@pytest.mark.parametrize("temperatures", [[1.0] * 6, [1.0, 0.0, 1.0, 0.0, 1.0, 1.0], [1.0, 0.7, 0.0, 1.3, 1.0, 1.0]])
def test_sampling_skips_no_work_that_changes_results(temperatures):
    """The host-side shortcuts of ``sample`` (no division when every temperature is 1, no argmax without
    greedy rows) give exactly what the full computation, as a CUDA graph runs it, gives."""
    from agentrl.engine.embedded.sampling import sample_plain

    logits = torch.randn(6, 4096, generator=torch.Generator().manual_seed(0)) * 4
    rows = SamplingRows.from_lists(temperature=temperatures, top_p=[1.0] * 6, top_k=[-1] * 6, seed=range(6), step=[3] * 6)
    ids, lps = sample(logits, rows)
    ref_ids, ref_lps = sample_plain(logits, torch.from_numpy(rows.packed().astype(np.float32)))
    assert torch.equal(ids, ref_ids) and torch.equal(lps, ref_lps)


def test_buckets():
    assert [batch_bucket(n, 256) for n in (1, 2, 3, 5, 9, 33, 64, 129, 300)] == [1, 2, 4, 8, 16, 48, 64, 160, 256]
    assert [length_bucket(n, 4096) for n in (1, 128, 129, 384, 385, 1000, 3000, 5000)] == [128, 128, 256, 384, 512, 1024, 3072, 4096]


def test_kv_cache_write_block_move_and_lazy_zeroing():
    kv = KVCache(n_layers=2, n_slots=3, n_kv_heads=2, max_len=8, head_dim=4, dtype=torch.float32, device=torch.device("cpu"))
    kv.allocate()
    kv.data.fill_(float("nan"))  # what uninitialised memory may hold
    kv.ensure_clean_slots([0, 1], [3, 3])
    k = torch.arange(2 * 2 * 4, dtype=torch.float32).view(2, 2, 4)  # 2 tokens, 2 heads
    idx = kv.write_index(torch.tensor([0, 1]), torch.tensor([2, 0]))
    kv.write(1, idx, torch.stack((k, -k), dim=1))  # [tokens, keys/values, heads, D]
    kb, vb = kv.block(1, 2, 3)
    assert torch.equal(kb[0, :, 2], k[0]) and torch.equal(vb[1, :, 0], -k[1])
    assert not torch.isnan(kb).any()
    kv.move(0, 2, 3)
    assert torch.equal(kv.data[1, 0, 2, :, 2], k[0])
    kv.ensure_clean(3, 8)
    assert not torch.isnan(kv.data[:, :, :3, :, :8]).any()
    assert kv.nbytes == 2 * 2 * (3 + 1) * 2 * 8 * 4 * 4  # one more slot: the scratch slot of padding tokens


def test_stop_string_search_only_in_generated_tail():
    from agentrl.engine.embedded.stops import StopStrings
    from agentrl.models import load_tokenizer

    tok = load_tokenizer("tiny-qwen2")
    stops = StopStrings(tok)
    ids = tok.encode("Let me search. <search>capital of France</search> and then")
    hits = [stops.find(ids[: i + 1], ["</search>"]) for i in range(len(ids))]
    first = next(i for i, h in enumerate(hits) if h)
    assert "</search>" in tok.decode(ids[: first + 1]) and "</search>" not in tok.decode(ids[:first])
    multibyte = tok.encode("héllo wörld")  # called after each new token, as the scheduler does
    assert [stops.find(multibyte[: i + 1], ["ö"]) for i in range(len(multibyte))].count("ö") >= 1
    assert stops.find(ids, []) is None


def test_a_temperature_below_sglangs_epsilon_is_greedy_with_finite_logprobs():
    """1e-40 is positive, but float32 logits divided by it are inf, then NaN: SGLang samples greedily below 1e-6,
    and so does the engine (not only its HTTP server)."""
    import torch

    from agentrl.engine.embedded.sampling import SamplingRows, sample

    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, 0.1, 0.2]])
    rows = SamplingRows.from_lists(temperature=[1e-40, 1e-7], top_p=[1.0, 1.0], top_k=[-1, -1], seed=[1, 2],
                                   step=[0, 0])
    ids, logprobs = sample(logits, rows)
    assert ids.tolist() == [1, 0] and torch.isfinite(logprobs).all()


def test_sampling_params_refuse_non_finite_temperatures():
    import math

    import pytest

    from agentrl.engine.base import SamplingParams

    for bad in (math.inf, math.nan, -1e-9):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            SamplingParams(temperature=bad).validate()
