"""A preallocated slot KV cache: one slot (batch row) per running request.

Layout: one tensor ``[layers, 2, slots, kv_heads, max_len, head_dim]`` (2 = keys, values).
Slot ``s`` holds the keys/values of one request at positions ``0 .. length-1``. The scheduler
keeps running requests in slots ``0 .. n-1`` (it moves the last one into a hole when a request
leaves), so a decode step reads the dense block ``[:n, :, :L]``.

One more slot than requested, :attr:`KVCache.scratch`, takes the writes of padding tokens (a
packed step of a CUDA graph's token bucket has more rows than tokens); no request ever reads it.

Moves and swaps of slots' prefixes (compaction, the prefix cache) are queued and run together, as one
gather and one scatter over every layer, before the cache is next read (:meth:`KVCache.flush`): a
multi-turn rollout makes hundreds of them between two steps, and one copy kernel each cost more
host time than the copies themselves.

Memory is ``2 * layers * (slots + 1) * kv_heads * max_len * head_dim * dtype_size`` bytes, fixed at
allocation. A paged cache would share memory between short and long requests; this one trades
that for a decode attention that is a plain strided read, capturable in a CUDA graph.

Example::

    >>> import torch
    >>> kv = KVCache(n_layers=2, n_slots=4, n_kv_heads=2, max_len=16, head_dim=8,
    ...              dtype=torch.float32, device=torch.device("cpu"))
    >>> kv.allocate()
    >>> kv.nbytes, kv.scratch
    (20480, 4)
"""

from __future__ import annotations

import numpy as np
import torch


class KVCache:
    def __init__(
        self,
        *,
        n_layers: int,
        n_slots: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.n_layers = n_layers
        self.n_slots = n_slots
        self.scratch = n_slots
        """The extra slot that padding tokens write to."""
        self.n_kv_heads = n_kv_heads
        self.max_len = max_len
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self._data: torch.Tensor | None = None
        # queued prefix copies (src, dst, length), run by flush(); every source is read before any
        # destination is written, so a swap is two of them
        self._pending: list[tuple[int, int, int]] = []
        self._pending_dst: set[int] = set()
        self._pending_tokens = 0
        # Positions [0, clean[s]) of slot s hold finite numbers. Attention reads a whole length
        # block for every row and masks the tail, and masked NaN garbage would still poison the
        # output (0 * NaN), so slots are zeroed before first use. CPU memory is zeroed lazily to
        # avoid committing the whole cache up front.
        self._clean = np.zeros(n_slots + 1, dtype=np.int64)

    @staticmethod
    def bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layers * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def nbytes(self) -> int:
        per_token = self.bytes_per_token(self.n_layers, self.n_kv_heads, self.head_dim, self.dtype)
        return per_token * (self.n_slots + 1) * self.max_len

    @property
    def allocated(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> torch.Tensor | None:
        """The cache ``[layers, 2, slots + 1, kv_heads, max_len, head_dim]``, queued moves done."""
        if self._pending:
            self.flush()
        return self._data

    def allocate(self) -> None:
        if self._data is not None:
            return
        shape = (self.n_layers, 2, self.n_slots + 1, self.n_kv_heads, self.max_len, self.head_dim)
        if self.device.type == "cpu":
            self._data = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._clean[:] = 0
        else:
            self._data = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._clean[:] = self.max_len

    def release(self) -> None:
        self._pending.clear()
        self._pending_dst.clear()
        self._pending_tokens = 0
        self._data = None

    def ensure_clean(self, n_rows: int, length: int) -> None:
        """Make positions ``[0, length)`` of slots ``[0, n_rows)`` finite (zeros where unwritten)."""
        dirty = np.flatnonzero(self._clean[:n_rows] < length)
        self.ensure_clean_slots(dirty.tolist(), [length] * len(dirty))

    def ensure_clean_slots(self, slots, lengths) -> None:
        """Per-slot form of :meth:`ensure_clean`; call it before writing a prompt into a slot."""
        assert self.data is not None
        for s, length in zip(slots, lengths):
            if self._clean[s] >= length:
                continue
            upto = min(self.max_len, max(length, 256) * 2)  # zero ahead, so this rarely runs
            self.data[:, :, s, :, int(self._clean[s]) : upto].zero_()
            self._clean[s] = upto

    def write_index(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row indices into one layer's flat cache for tokens at (slot, position). [N], [N] -> [N * 2 * kv_heads],
        ordered like ``kv.reshape(-1, head_dim)`` of new keys/values ``kv`` [N, 2, kv_heads, head_dim]."""
        kind = torch.arange(2, device=slots.device)[None, :, None]  # keys, values
        heads = torch.arange(self.n_kv_heads, device=slots.device)[None, None, :]
        rows = (kind * (self.n_slots + 1) + slots[:, None, None]) * self.n_kv_heads + heads  # [N, 2, Hkv]
        return (rows * self.max_len + positions[:, None, None]).reshape(-1)

    def write(self, layer: int, index: torch.Tensor, kv: torch.Tensor) -> None:
        """Store new keys/values ``kv`` [N, 2, kv_heads, head_dim] at ``index`` (from :meth:`write_index`)."""
        assert self.data is not None
        d = self.head_dim
        self.data[layer].view(-1, d).index_copy_(0, index, kv.reshape(-1, d))

    def caches(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, every slot and position: 2 x [slots, kv_heads, max_len, D]."""
        assert self.data is not None
        return self.data[layer, 0], self.data[layer, 1]

    def block(self, layer: int, n_rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots ``[0, n_rows)``, positions ``[0, length)``: 2 x [n, kv_heads, L, D]."""
        assert self.data is not None
        return self.data[layer, 0, :n_rows, :, :length], self.data[layer, 1, :n_rows, :, :length]

    def blocks_of(self, layer: int, slots: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the given slots (a copy), positions ``[0, length)``: 2 x [len(slots), kv_heads, L, D]."""
        assert self.data is not None
        both = self.data[layer, :, :, :, :length].index_select(1, slots)  # [2, n, kv_heads, L, D]
        return both[0], both[1]

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange the first ``length`` positions of slots ``a`` and ``b`` (queued, see :meth:`flush`)."""
        assert self._data is not None
        if a in self._pending_dst or b in self._pending_dst:  # they must read what queued moves write
            self.flush()
        self._queue(a, b, length)
        self._queue(b, a, length)
        self._bound()
        clean_a, clean_b = int(self._clean[a]), int(self._clean[b])

        def after(own: int, other: int) -> int:  # finite prefix once [0, length) came from `other`
            return other if other < length else max(own, length)

        self._clean[a], self._clean[b] = after(clean_a, clean_b), after(clean_b, clean_a)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst`` (queued, see :meth:`flush`)."""
        assert self._data is not None
        if src in self._pending_dst or dst in self._pending_dst:  # read after a queued write, or two writes
            self.flush()
        self._queue(src, dst, length)
        self._bound()
        self._clean[dst] = max(int(self._clean[dst]), length)

    PENDING_BYTES = 256 << 20
    """Bound on the queued moves' keys/values (the gather holds them all at once)."""

    def _queue(self, src: int, dst: int, length: int) -> None:
        if length > 0 and src != dst:
            self._pending.append((src, dst, length))
            self._pending_dst.add(dst)
            self._pending_tokens += length

    def _bound(self) -> None:
        per_token = self.bytes_per_token(self.n_layers, self.n_kv_heads, self.head_dim, self.dtype)
        if self._pending_tokens * per_token > self.PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        """Run the queued moves: one gather of every source position (all layers, keys and values) and
        one scatter into the destinations. The queue never holds a move that reads a slot another
        writes, nor two writes to one slot, so the result is that of running them one by one."""
        moves, self._pending = self._pending, []
        self._pending_dst.clear()
        self._pending_tokens = 0
        if not moves or self._data is None:
            return
        h, m = self.n_kv_heads, self.max_len
        arr = np.asarray(moves, dtype=np.int64)  # [k, 3]
        lengths = np.repeat(arr[:, 2], h)  # one run of positions per (move, head)
        heads = np.tile(np.arange(h, dtype=np.int64), len(moves))
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = np.repeat((np.repeat(arr[:, 0], h) * h + heads) * m, lengths) + offsets
        dst = np.repeat((np.repeat(arr[:, 1], h) * h + heads) * m, lengths) + offsets
        index = torch.from_numpy(np.stack([src, dst])).to(self.device, non_blocking=True)
        flat = self._data.view(self.n_layers * 2, (self.n_slots + 1) * h * m, self.head_dim)
        flat.index_copy_(1, index[1], flat.index_select(1, index[0]))
