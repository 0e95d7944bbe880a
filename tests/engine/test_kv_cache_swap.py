"""KVCache.swap keeps the record of which positions hold finite numbers (the CPU cache is not zeroed up front)."""

import torch

from agentrl.engine.embedded.kv_cache import KVCache


def test_swap_exchanges_prefixes_and_tracks_finite_positions():
    kv = KVCache(n_layers=1, n_slots=3, n_kv_heads=1, max_len=8, head_dim=2, dtype=torch.float32,
                 device=torch.device("cpu"))
    kv.allocate()
    kv.data.fill_(float("nan"))
    kv.data[:, :, 0, :, :3] = 1.0
    kv._clean[0] = 3
    kv.data[:, :, 1, :, :6] = 2.0
    kv._clean[1] = 6
    kv.swap(0, 1, 5)
    assert (kv.data[:, :, 0, :, :5] == 2.0).all() and (kv.data[:, :, 1, :, :3] == 1.0).all()
    assert kv._clean[0] == 5  # [0, 5) from slot 1 (finite to 6); position 5 of slot 0 was never finite
    assert kv._clean[1] == 3  # positions 3, 4 now hold slot 0's unwritten garbage
    kv.ensure_clean(2, 6)
    assert torch.isfinite(kv.data[:, :, :2, :, :6]).all()
