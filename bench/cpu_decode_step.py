"""Where a CPU decode step of the embedded engine's fast path goes (float32, no scheduler).

Two parts, rounds interleaved so that a noisy machine hits every variant alike:

* decode attention alone over every layer of a cache block (SmolLM2-135M's 30 layers, 3 KV heads
  of 3 query heads, head dim 64) that does not fit the caches: PyTorch's SDPA with a length mask,
  the CPU kernel (``agentrl.engine.embedded.cpu_attention``), and one plain read of the keys and
  values (``sum``), the floor of any attention;
* the whole decode step of SmolLM2-135M with packed weights, with each attention, and the LM head
  and the sampling of one step on their own.

Median ms of the rounds.

    python bench/cpu_decode_step.py --out bench/results
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import save  # noqa: E402


def _interleaved(variants: dict, rounds: int, inner: int = 3) -> dict[str, float]:
    """Median ms per call of each variant; every round times each variant once (``inner`` calls)."""
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t) / inner * 1e3)
    return {name: round(statistics.median(ts), 2) for name, ts in times.items()}


def attention_part(batch: int, lengths: list[int], rounds: int) -> list[dict]:
    from agentrl.engine.embedded import cpu_attention

    n_layers, kv_heads, group, dim, max_len = 30, 3, 3, 64, max(lengths) + 64
    cache = torch.randn(n_layers, 2, batch, kv_heads, max_len, dim)
    q = torch.randn(batch, kv_heads, group, dim)
    rows = []
    for length in lengths:
        pos = torch.full((batch,), length - 1)
        mask = torch.zeros(batch, 1, 1, length)

        def over_layers(attend, length=length):
            def run():
                for i in range(n_layers):
                    attend(cache[i, 0, :, :, :length], cache[i, 1, :, :, :length])
            return run

        variants = {
            "sdpa": over_layers(lambda k, v, mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                                      scale=dim**-0.5)),
            "cpu kernel": over_layers(lambda k, v, pos=pos: cpu_attention.decode_attention(q, k, v, pos, dim**-0.5)),
            "read k+v once": over_layers(lambda k, v: (k.sum(), v.sum())),
        }
        for name, ms in _interleaved(variants, rounds).items():
            rows.append({"part": "attention, 30 layers", "variant": name, "batch": batch, "length": length, "ms": ms})
    return rows


def step_part(batch: int, length: int, rounds: int) -> list[dict]:
    from agentrl.engine.embedded.fast_model import FastLM
    from agentrl.engine.embedded.kv_cache import KVCache
    from agentrl.engine.embedded.sampling import SamplingRows, sample
    from agentrl.models import load_model

    model, _ = load_model("smollm2-135m-instruct")
    cfg = model.config
    lms = {a: FastLM(model, max_seq_len=length + 64, fuse=True, pack=batch, attention=a) for a in ("sdpa", "cpu")}
    kv = KVCache(n_layers=cfg.num_hidden_layers, n_slots=batch, n_kv_heads=cfg.num_key_value_heads,
                 max_len=length + 64, head_dim=cfg.hidden_size // cfg.num_attention_heads, dtype=torch.float32,
                 device=torch.device("cpu"))
    kv.allocate()
    kv.data.normal_(0, 0.1)
    tok = torch.randint(100, 40000, (batch,))
    pos = torch.full((batch,), length - 1)
    h = torch.randn(batch, cfg.hidden_size)
    rows_s = SamplingRows.from_lists(temperature=[1.0] * batch, top_p=[1.0] * batch, top_k=[-1] * batch,
                                     seed=range(batch), step=[0] * batch)
    with torch.inference_mode():
        logits = lms["cpu"].decode(kv, tok, pos, length)
        variants = {
            "decode step, SDPA attention": lambda: lms["sdpa"].decode(kv, tok, pos, length),
            "decode step, CPU kernel": lambda: lms["cpu"].decode(kv, tok, pos, length),
            "LM head (packed)": lambda: lms["cpu"].logits(h),
            "sampling": lambda: sample(logits, rows_s),
        }
        times = _interleaved(variants, rounds)
    return [{"part": "SmolLM2-135M step", "variant": name, "batch": batch, "length": length, "ms": ms}
            for name, ms in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lengths", default="64,128,192", help="cached positions per row (attention part)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", help="folder for cpu_decode_step.{json,md}")
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = attention_part(args.batch, lengths, args.rounds)
    rows += step_part(args.batch, lengths[len(lengths) // 2], args.rounds)
    lines = [f"# CPU decode step, float32, {torch.get_num_threads()} threads",
             "", f"Date {datetime.date.today()}; torch {torch.__version__}; median ms of {args.rounds} rounds.", "",
             "| part | variant | batch | positions | ms |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['part']} | {r['variant']} | {r['batch']} | {r['length']} | {r['ms']:.2f} |" for r in rows]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        print("wrote", save(args.out, "cpu_decode_step", {"args": vars(args), "rows": rows}, md))


if __name__ == "__main__":
    main()
