"""Training throughput and MFU of the Megatron backend on one GPU, SDPA spec vs the local spec.

A training step is what the RL trainer runs: ``--grad-accum`` micro-batches of forward, token
log-probs computed vocabulary-parallel from the logits (``agentrl.train.megatron.logprobs``), a
loss on them and backward, then one step of megatron-core's distributed optimizer (Adam, fp32
main weights). An RL optimiser step usually spans many micro-batches; ``--grad-accum 1`` charges
the whole optimizer step to every micro-batch.
The models are random, with the shapes of Qwen2.5-0.5B and Qwen2.5-1.5B (throughput does not
depend on the weights); every sequence is ``--seq-len`` tokens, bf16.

FLOPs per token (the usual 6N + attention, Kaplan et al. 2020 / PaLM appendix B)::

    N_matmul = L (h (q + 2 kv) + q h + 3 h f) + V h      # every matmul weight, LM head included
    causal   = 6 N_matmul + 6 L s q                      # attention over s/2 keys on average
    full     = 6 N_matmul + 12 L s q                     # PaLM's count (attention over all s keys)

with ``q`` = heads x head_dim, ``kv`` = KV heads x head_dim, ``s`` the sequence length. MFU =
achieved FLOP/s / ``--peak-tflops`` (989 for an H100 SXM, dense bf16). The ``mfu`` column uses
the causal count (the work actually needed); ``mfu_palm`` the full count.

Systems (``--backends``): ``sdpa`` (this project's layer spec: SDPA core attention, HF-exact
RMSNorm) and ``local`` (megatron-core's unfused local spec, the baseline); ``te`` when
Transformer Engine is installed. A case that runs out of memory is recorded as ``oom``.

Usage::

    python bench/megatron_mfu.py                      # 0.5b and 1.5b, seq 4096, sdpa vs local
    python bench/megatron_mfu.py --shapes 1.5b --micro-batch-sizes 1,2,4 --recompute none,full
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench")

SHAPES = {
    # Qwen2.5-0.5B and Qwen2.5-1.5B (config.json of the released models)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


@dataclass
class Result:
    shape: str
    backend: str
    micro_batch_size: int
    seq_len: int
    recompute: str
    grad_accum: int = 1
    status: str = "ok"
    step_s: float = 0.0
    tokens_per_s: float = 0.0
    tflops: float = 0.0
    mfu: float = 0.0
    mfu_palm: float = 0.0
    peak_mem_gb: float = 0.0
    params_b: float = 0.0
    fwd_s: float = 0.0
    """One extra step, timed by phase (synchronised): forward + log-probs of all micro-batches ..."""
    bwd_s: float = 0.0
    """... their backward passes ..."""
    opt_s: float = 0.0
    """... and the optimizer step (gradient finalisation, clipping, Adam)."""
    profile: str = ""
    error: str = ""


def qwen2_config(name: str):
    from transformers import AutoConfig

    return AutoConfig.for_model("qwen2", max_position_embeddings=32768, rms_norm_eps=1e-6,
                                rope_theta=1_000_000.0, **SHAPES[name])


def flops_per_token(shape, seq_len: int) -> tuple[float, float]:
    """(causal, full) training FLOPs per token; see the module docstring."""
    h, f, L = shape.hidden_size, shape.ffn_hidden_size, shape.num_layers
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_query_groups * shape.head_dim
    n_matmul = L * (h * (q + 2 * kv) + q * h + 3 * h * f) + shape.vocab_size * h
    return 6 * n_matmul + 6 * L * seq_len * q, 6 * n_matmul + 12 * L * seq_len * q


def run_case(name: str, backend: str, mbs: int, seq_len: int, recompute: str, args) -> Result:
    from agentrl.train.base import TrainConfig
    from agentrl.train.megatron.logprobs import vocab_parallel_logprobs
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model
    from agentrl.train.megatron.optim import MegatronOptimizer
    from agentrl.train.megatron.shape import ModelShape

    res = Result(name, backend, mbs, seq_len, recompute, args.grad_accum)
    shape = ModelShape.from_hf(qwen2_config(name))
    res.params_b = shape.num_parameters / 1e9
    causal, full = flops_per_token(shape, seq_len)
    model = opt = None
    try:
        torch.cuda.reset_peak_memory_stats()
        options = MegatronModelConfig(dtype="bfloat16", attention=backend, recompute=recompute, fusions=args.fusions)
        model = build_gpt_model(shape, options, calculate_per_token_loss=True)
        opt = MegatronOptimizer(model, TrainConfig(lr=1e-5), lr=1e-5)
        g = torch.Generator(device="cuda").manual_seed(0)
        ids = torch.randint(0, shape.vocab_size, (mbs, seq_len), device="cuda", generator=g)
        targets = torch.roll(ids, -1, dims=1)

        def step() -> None:
            opt.zero_grad()
            for _ in range(args.grad_accum):
                logits = opt.model(ids, None, None)  # [b, s, V]
                lp, _ = vocab_parallel_logprobs(logits, targets, vocab_size=shape.vocab_size)
                (-lp.mean() / args.grad_accum).backward()
                del logits, lp
            opt.step()

        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        res.step_s = (time.perf_counter() - t0) / args.steps
        res.tokens_per_s = args.grad_accum * mbs * seq_len / res.step_s
        res.tflops = res.tokens_per_s * causal / 1e12
        res.mfu = res.tflops / args.peak_tflops
        res.mfu_palm = res.tokens_per_s * full / 1e12 / args.peak_tflops
        res.peak_mem_gb = torch.cuda.max_memory_allocated() / 2**30
        res.fwd_s, res.bwd_s, res.opt_s = phase_times(opt, ids, targets, shape.vocab_size, args.grad_accum)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            res.profile = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
            print(res.profile, flush=True)
    except torch.OutOfMemoryError:
        res.status, res.peak_mem_gb = "oom", torch.cuda.max_memory_allocated() / 2**30
    except Exception as err:  # a failing case is a result, the others still run
        res.status, res.error = "error", f"{type(err).__name__}: {err}"
        log.error("%s", traceback.format_exc())
    finally:
        model = opt = None  # frees the GPU memory (step() still refers to opt: rebound, not deleted)
        gc.collect()
        torch.cuda.empty_cache()
    log.info("%s", res)
    return res


def phase_times(opt, ids, targets, vocab_size: int, grad_accum: int) -> tuple[float, float, float]:
    """Seconds of one training step spent in forward + log-probs, backward and the optimizer."""
    from agentrl.train.megatron.logprobs import vocab_parallel_logprobs

    fwd = bwd = 0.0
    opt.zero_grad()
    for _ in range(grad_accum):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = opt.model(ids, None, None)
        lp, _ = vocab_parallel_logprobs(logits, targets, vocab_size=vocab_size)
        loss = -lp.mean() / grad_accum
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        fwd, bwd = fwd + t1 - t0, bwd + time.perf_counter() - t1
        del logits, lp, loss
    t0 = time.perf_counter()
    opt.step()
    torch.cuda.synchronize()
    return fwd, bwd, time.perf_counter() - t0


def to_markdown(results: list[Result], meta: dict) -> str:
    lines = [f"# Megatron backend training MFU ({meta['gpu']})", "",
             f"{meta['date']}, torch {meta['torch']}, megatron-core {meta['megatron_core']}, "
             f"peak {meta['peak_tflops']} TFLOP/s, {meta['steps']} timed steps after {meta['warmup']} warm-up, "
             f"fusions {'on' if meta.get('fusions') else 'off'}.", "",
             "| shape | spec | micro-batch | seq | grad accum | recompute | tokens/s | TFLOP/s | MFU | MFU (PaLM) | peak GiB "
             "| fwd / bwd / optimizer s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.shape} | {r.backend} | {r.micro_batch_size} | {r.seq_len} | {r.grad_accum} | "
                         f"{r.recompute} | {r.status} | | | | {r.peak_mem_gb:.1f} | |")
            continue
        lines.append(f"| {r.shape} | {r.backend} | {r.micro_batch_size} | {r.seq_len} | {r.grad_accum} | "
                     f"{r.recompute} | {r.tokens_per_s:,.0f} | {r.tflops:.0f} | {100 * r.mfu:.1f}% | {100 * r.mfu_palm:.1f}% | "
                     f"{r.peak_mem_gb:.1f} | {r.fwd_s:.3f} / {r.bwd_s:.3f} / {r.opt_s:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="0.5b,1.5b", help="comma separated: " + ",".join(SHAPES))
    ap.add_argument("--backends", default="sdpa,local", help="comma separated: sdpa, local, te")
    ap.add_argument("--micro-batch-sizes", default="1,2", help="sequences per step (sdpa/te)")
    ap.add_argument("--local-micro-batch-sizes", default="1", help="sequences per step for the local spec")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--recompute", default="none", help="comma separated: none, full, selective")
    ap.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--fusions", action="store_true", help="megatron-core's torch.compile'd SwiGLU / bias-dropout-add")
    ap.add_argument("--profile", action="store_true", help="print (and keep in the JSON) the top kernels of one step")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--out", default=None, help="results stem (default bench/results/megatron_mfu_<gpu>)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not torch.cuda.is_available():
        sys.exit("bench/megatron_mfu.py needs a CUDA GPU")
    from megatron.core import package_info

    from agentrl.train.megatron.parallel import init_parallel

    init_parallel(1, 1)
    gpu = torch.cuda.get_device_name()
    results = []
    for name in args.shapes.split(","):
        for backend in args.backends.split(","):
            sizes = args.local_micro_batch_sizes if backend == "local" else args.micro_batch_sizes
            for recompute in args.recompute.split(","):
                for mbs in (int(x) for x in sizes.split(",")):
                    results.append(run_case(name, backend, mbs, args.seq_len, recompute, args))
    meta = dict(gpu=gpu, date=datetime.date.today().isoformat(), torch=torch.__version__,
                megatron_core=package_info.__version__, python=platform.python_version(), fusions=args.fusions,
                peak_tflops=args.peak_tflops, steps=args.steps, warmup=args.warmup)
    stem = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        "megatron_mfu_" + gpu.lower().replace("nvidia ", "").replace(" ", "_").replace("/", "_"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))
    stem.with_suffix(".md").write_text(to_markdown(results, meta))
    print(to_markdown(results, meta))


if __name__ == "__main__":
    main()
