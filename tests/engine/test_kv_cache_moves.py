"""KVCache queues moves and swaps and runs them in one gather and scatter: the result is that of running
them one by one, in order, whatever reads and writes of the same slots they mix."""

import numpy as np
import pytest
import torch

from agentrl.engine.embedded.kv_cache import KVCache


def _cache(n_slots: int = 6, max_len: int = 12) -> KVCache:
    kv = KVCache(n_layers=2, n_slots=n_slots, n_kv_heads=2, max_len=max_len, head_dim=3, dtype=torch.float32,
                 device=torch.device("cpu"))
    kv.allocate()
    return kv


def _one_by_one(data: torch.Tensor, ops: list[tuple[str, int, int, int]]) -> torch.Tensor:
    data = data.clone()
    for op, a, b, length in ops:
        if op == "move":
            data[:, :, b, :, :length] = data[:, :, a, :, :length].clone()
        else:
            held = data[:, :, a, :, :length].clone()
            data[:, :, a, :, :length] = data[:, :, b, :, :length]
            data[:, :, b, :, :length] = held
    return data


@pytest.mark.parametrize("seed", range(20))
def test_queued_moves_and_swaps_equal_running_them_in_order(seed):
    rng = np.random.default_rng(seed)
    kv = _cache()
    start = torch.randn(kv.data.shape)
    kv.data.copy_(start)
    ops = []
    for _ in range(int(rng.integers(1, 12))):
        a, b = (int(x) for x in rng.choice(kv.n_slots, 2, replace=False))
        ops.append(("move" if rng.random() < 0.7 else "swap", a, b, int(rng.integers(1, kv.max_len + 1))))
    for op, a, b, length in ops:
        getattr(kv, op)(a, b, length)
    assert torch.equal(kv.data, _one_by_one(start, ops))
    assert not kv._pending


def test_moves_wait_for_a_read_and_a_chain_reads_the_moved_keys():
    kv = _cache()
    kv.data.zero_()
    kv._data[:, :, 0, :, :4] = 1.0
    kv.move(0, 1, 4)
    kv.move(1, 2, 4)  # reads slot 1, which the queued move writes: that one runs first
    assert len(kv._pending) == 1
    assert (kv.data[:, :, 2, :, :4] == 1.0).all() and (kv.data[:, :, 1, :, :4] == 1.0).all()


def test_a_bound_on_queued_bytes_flushes_early():
    kv = _cache()
    kv.PENDING_BYTES = 3 * KVCache.bytes_per_token(kv.n_layers, kv.n_kv_heads, kv.head_dim, kv.dtype)
    kv.move(0, 1, 2)
    assert kv._pending
    kv.move(2, 3, 2)  # 4 tokens queued > 3
    assert not kv._pending
