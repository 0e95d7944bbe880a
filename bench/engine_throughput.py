"""Throughput of the embedded engine against transformers ``generate()``, same model, same prompts.

Systems (``--systems``, comma separated):

* ``engine``: :class:`agentrl.engine.embedded.EmbeddedEngine` with its defaults; ``engine:k=v;k=v``
  sets :class:`~agentrl.engine.embedded.EngineConfig` fields (e.g. ``engine:compile=0``);
* ``hf``: ``model.generate()`` in its default form (dynamic cache);
* ``hf-static``: ``model.generate(cache_implementation="static")``; on CUDA transformers then
  compiles the decode step by itself (``torch.compile``, CUDA graphs); on the CPU it does not;
* ``hf-cb``: ``model.generate_batch()``, transformers' continuous batching (paged attention).

Every request: a random prompt of ``--prompt-len`` tokens, then exactly ``--new-tokens`` sampled
tokens (temperature 1, no top-k/top-p; ``ignore_eos`` for the engine, ``min_new_tokens`` for
transformers). For each batch every system is warmed up by one full-length run, then the systems are
timed round-robin ``--repeats`` times and each keeps its best run. Tokens/s counts new tokens over
wall time, prefill included. The decode roofline is ``batch / (bytes per step /
memory bandwidth)`` with bytes per step = weights read once + the KV cache of every row at its mean
length; the bandwidth is measured here with a large device copy.

Usage::

    python bench/engine_throughput.py --preset cpu    # SmolLM2-135M, float32, batch 1/8/32
    python bench/engine_throughput.py --preset h100   # Qwen2.5-0.5B-shaped random model, bf16, batch 1/64/256
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import functools
import gc
import json
import logging
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentrl.engine import SamplingParams  # noqa: E402
from agentrl.engine.embedded import EmbeddedEngine  # noqa: E402

log = logging.getLogger("bench")

PRESETS = {
    "cpu": dict(model="smollm2-135m-instruct", device="cpu", batches=[1, 8, 32], prompt_len=64, new_tokens=128,
                systems=["engine", "hf", "hf-static"], repeats=2),
    "h100": dict(model="qwen2.5-0.5b-shape", device="cuda", batches=[1, 64, 256], prompt_len=128, new_tokens=256,
                 systems=["engine", "hf-static", "hf"], repeats=1),
}

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")


@dataclass
class Result:
    system: str
    batch: int
    seconds: float | None = None
    tok_s: float | None = None
    decode_tok_s: float | None = None
    roofline_tok_s: float | None = None
    roofline_share: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def build_model(name: str, device: str, dtype: torch.dtype | None = None):
    """The benchmark's model; ``dtype`` None: bf16 on CUDA, float32 on the CPU."""
    if name == "qwen2.5-0.5b-shape":
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.for_model("qwen2", **QWEN25_05B)
        cfg.architectures = ["Qwen2ForCausalLM"]
        torch.manual_seed(0)
        dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
        with torch.device(device):
            default = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                model = AutoModelForCausalLM.from_config(cfg)
            finally:
                torch.set_default_dtype(default)
        return model.eval(), None
    from agentrl.models import load_model

    return load_model(name, device=device, dtype=dtype)


def bandwidth_gbps(device: str) -> float:
    n = (1 << 28) if device == "cuda" else (1 << 26)  # floats: 1 GiB / 256 MiB
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * a.element_size() / best / 1e9


def bytes_per_step(model, batch: int, mean_len: float) -> tuple[float, float]:
    seen, weights = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        weights += p.numel() * p.element_size()
    emb = model.get_input_embeddings().weight
    if emb.data_ptr() != model.get_output_embeddings().weight.data_ptr():
        weights -= emb.numel() * emb.element_size()  # an untied input table is only gathered
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * emb.element_size()
    return float(weights), float(batch * mean_len * kv_per_token)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_engine(engine: EmbeddedEngine, prompts: list[list[int]], new_tokens: int) -> float:
    sp = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, ignore_eos=True)

    async def main():
        t = time.perf_counter()
        outs = await asyncio.gather(*(engine.generate(p, sp.replace(seed=i)) for i, p in enumerate(prompts)))
        dt = time.perf_counter() - t
        assert all(len(o.token_ids) == new_tokens for o in outs), "engine returned short completions"
        return dt

    return asyncio.run(main())


def run_hf(model, prompts: list[list[int]], new_tokens: int, device: str, static: bool) -> float:
    ids = torch.tensor(prompts, device=device)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    if static:
        kwargs["cache_implementation"] = "static"
    _sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, **kwargs)
    _sync(device)
    dt = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + new_tokens
    return dt


def run_hf_cb(model, prompts: list[list[int]], new_tokens: int, device: str) -> float:
    from transformers import GenerationConfig

    gc_ = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                           top_k=0, top_p=1.0, eos_token_id=-1, pad_token_id=0)
    _sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        model.generate_batch(inputs=prompts, generation_config=gc_, progress_bar=False)
    _sync(device)
    return time.perf_counter() - t


def profile_engine(engine: EmbeddedEngine, prompts: list[list[int]], new_tokens: int, device: str) -> list:
    """Top device kernels (or CPU ops) of one timed run, by self time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        run_engine(engine, prompts, new_tokens)
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:25]
    table = [(e.key[:80], e.count, round(getattr(e, key, 0) / 1000, 2)) for e in rows]
    for name, count, ms in table:
        log.info("  %-80s %7d %10.2f ms", name, count, ms)
    return table


def parse_system(spec: str) -> tuple[str, dict]:
    name, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(";")):
        k, _, v = item.partition("=")
        options[k] = {"0": False, "1": True, "false": False, "true": True}.get(v.lower(), v)
        if isinstance(options[k], str) and options[k].isdigit():
            options[k] = int(options[k])
    return name, options


def warm_engine(engine: EmbeddedEngine, run_once, max_runs: int = 4) -> int:
    """Repeat full-length runs until one neither captures a CUDA graph nor runs a step eagerly
    (the engine captures a shape on its third use); returns the extra runs. CPU engines: none."""
    if not engine.config.cuda_graphs or engine.device.type != "cuda":
        return 0
    for extra in range(1, max_runs + 1):
        before = dataclasses.replace(engine.stats)
        run_once()
        after = engine.stats
        eager = (after.steps - before.steps) - (after.graph_steps - before.graph_steps)
        if eager == 0 and after.graphs_captured == before.graphs_captured:
            return extra
    log.warning("engine still captured graphs or ran eager steps after %d warm-up runs", max_runs + 1)
    return max_runs


def measure(args, model, prompts_all, bw: float, out_path: Path | None, results: list[Result]) -> None:
    """For each batch: warm every system up with a full-length run, then time them round-robin
    ``--repeats`` times and keep each one's best run (fair under a fluctuating machine load)."""
    device = args.device
    engines: dict[str, EmbeddedEngine] = {}

    def run(spec: str, prompts: list[list[int]], new_tokens: int) -> float:
        c0 = time.process_time()
        dt = _run(spec, prompts, new_tokens)
        cpu_times[spec] = time.process_time() - c0
        return dt

    cpu_times: dict[str, float] = {}

    def _run(spec: str, prompts: list[list[int]], new_tokens: int) -> float:
        name, options = parse_system(spec)
        if name == "engine":
            if spec not in engines:
                # every run sends the same prompts: a prefix cache would skip the timed runs' prefills
                options = {"prefix_cache": False, **options}
                engines[spec] = EmbeddedEngine(model, None, max_batch_size=max(args.batches),
                                               max_seq_len=args.prompt_len + args.new_tokens + 8, **options)
            return run_engine(engines[spec], prompts, new_tokens)
        if name in ("hf", "hf-static"):
            return run_hf(model, prompts, new_tokens, device, static=name == "hf-static")
        if name == "hf-cb":
            return run_hf_cb(model, prompts, new_tokens, device)
        raise ValueError(f"unknown system {name!r}")

    for batch in args.batches:
        prompts = prompts_all[:batch]
        table = {spec: Result(system=spec, batch=batch) for spec in args.systems}
        times: dict[str, list[float]] = {spec: [] for spec in args.systems}
        cpu: dict[str, list[float]] = {spec: [] for spec in args.systems}
        for spec in args.systems:
            try:
                table[spec].extra["warmup_s"] = round(run(spec, prompts, args.new_tokens), 2)
                if spec in engines:  # warm until steady state: every decode step replays a captured graph
                    table[spec].extra["warmup_runs"] = 1 + warm_engine(engines[spec], functools.partial(run, spec, prompts, args.new_tokens))
            except Exception as exc:  # one failed system does not lose the others
                table[spec].note = f"failed: {exc!r}"
                log.error("%s batch %d failed:\n%s", spec, batch, traceback.format_exc())
        for _ in range(args.repeats):
            for spec in args.systems:
                if table[spec].note:
                    continue
                engine = engines.get(spec)
                before = dataclasses.replace(engine.stats) if engine else None
                try:
                    dt = run(spec, prompts, args.new_tokens)
                except Exception as exc:
                    table[spec].note = f"failed: {exc!r}"
                    log.error("%s batch %d failed:\n%s", spec, batch, traceback.format_exc())
                    continue
                times[spec].append(dt)
                cpu[spec].append(cpu_times[spec])
                if engine is not None and dt == min(times[spec]):
                    steps = engine.stats.steps - before.steps
                    table[spec].extra.update(
                        steps=steps,
                        step_ms=round(1000 * (engine.stats.busy_s - before.busy_s) / max(steps, 1), 3),
                        decode_step_ms=round(1000 * (engine.stats.decode_s - before.decode_s) / max(steps, 1), 3),
                    )
        for spec in args.systems:
            res = table[spec]
            if times[spec]:
                dt = min(times[spec])
                res.seconds = round(dt, 4)
                res.tok_s = batch * args.new_tokens / dt
                res.extra["runs_s"] = [round(t, 3) for t in times[spec]]
                res.extra["runs_cpu_s"] = [round(t, 3) for t in cpu[spec]]
                res.extra["tok_per_cpu_s"] = round(batch * args.new_tokens / min(cpu[spec]), 2)
                if spec in engines:
                    engine = engines[spec]
                    res.extra["config"] = asdict(engine.config)
                    t_prefill = min(run(spec, prompts, 1) for _ in range(max(1, args.repeats)))
                    res.extra["prefill_s"] = round(t_prefill, 4)
                    res.decode_tok_s = batch * (args.new_tokens - 1) / max(dt - t_prefill, 1e-9)
                    if args.profile:
                        res.extra["profile"] = profile_engine(engine, prompts, args.new_tokens, device)
                w, kv = bytes_per_step(model, batch, args.prompt_len + args.new_tokens / 2)
                res.roofline_tok_s = batch / ((w + kv) / (bw * 1e9))
                res.roofline_share = (res.decode_tok_s or res.tok_s) / res.roofline_tok_s
            results.append(res)
            log.info("%-40s batch %4d  %s tok/s  %s", spec, batch,
                     f"{res.tok_s:10.1f}" if res.tok_s else "      n/a", res.note)
        if out_path:
            write_results(args, model, bw, results, out_path)
    for engine in engines.values():
        asyncio.run(engine.close())
    engines.clear()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def write_results(args, model, bw, results: list[Result], out_path: Path) -> None:
    doc = report(args, model, bw, results)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1))
    out_path.with_suffix(".md").write_text(markdown(doc))


def report(args, model, bw, results: list[Result]) -> dict:
    """The run's results with the machine, versions and settings."""
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    if args.device == "cpu":
        try:
            device_name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
            device_name += f", {torch.get_num_threads()} threads"
        except (OSError, StopIteration):
            pass
    import transformers

    doc = {
        "date": datetime.date.today().isoformat(),
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": args.model,
        "dtype": str(next(model.parameters()).dtype),
        "params": sum(p.numel() for p in model.parameters()),
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "sampling": "temperature 1.0, top_p 1, top_k off, fixed length (ignore_eos / min_new_tokens)",
        "bandwidth_GBps_measured": round(bw, 1),
        "load_average": os.getloadavg(),
        "results": [asdict(r) for r in results],
        "ratios": ratios(results),
        "ratios_cpu_time": ratios(results, "tok_per_cpu_s") if args.device == "cpu" else {},
        "threads": torch.get_num_threads(),
        "threading_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
        "command": "python " + " ".join(sys.argv),
    }
    return doc


def ratios(results: list[Result], key: str = "tok_s") -> dict:
    table = {(r.system, r.batch): (r.tok_s if key == "tok_s" else r.extra.get(key)) for r in results if r.tok_s}
    out = {}
    for (system, batch), v in table.items():
        if not system.startswith("engine"):
            continue
        for base in ("hf", "hf-static", "hf-cb"):
            if (base, batch) in table:
                out[f"{system} / {base} @ batch {batch}"] = round(v / table[(base, batch)], 3)
    return out


def _env_note(doc: dict) -> str:
    env = doc.get("threading_env") or {}
    return (" Threading environment: " + ", ".join(f"`{k}={v}`" for k, v in env.items()) + ".") if env else ""


def markdown(doc: dict) -> str:
    lines = [
        f"# Engine throughput: {doc['model']} ({doc['dtype']}) on {doc['device']}",
        "",
        f"Date {doc['date']}; torch {doc['torch']}, transformers {doc['transformers']}; "
        f"{doc['prompt_len']} prompt + {doc['new_tokens']} new tokens per request; {doc['sampling']}. "
        f"Measured copy bandwidth {doc['bandwidth_GBps_measured']} GB/s.{_env_note(doc)}",
        "",
        "| system | batch | new tok/s | decode tok/s | roofline tok/s | share of roofline | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        f = lambda v, p=1: "" if v is None else f"{v:,.{p}f}"  # noqa: E731
        lines.append(f"| {r['system']} | {r['batch']} | {f(r['tok_s'])} | {f(r['decode_tok_s'])} | "
                     f"{f(r['roofline_tok_s'], 0)} | {f(r['roofline_share'], 3)} | {r['note']} |")
    lines += ["", "Ratios (tokens/s, same run):", ""]
    lines += [f"- {k}: **{v}x**" for k, v in doc["ratios"].items()]
    if doc.get("ratios_cpu_time"):
        lines += ["", f"Ratios of tokens per CPU-second of this process ({doc.get('threads')} torch threads; "
                  f"robust to other processes on a shared machine; load average {doc.get('load_average')}):", ""]
        lines += [f"- {k}: **{v}x**" for k, v in doc["ratios_cpu_time"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--model")
    p.add_argument("--device")
    p.add_argument("--batches", help="comma separated, e.g. 1,8,32")
    p.add_argument("--prompt-len", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--systems", help="comma separated: engine[:k=v;k=v], hf, hf-static, hf-cb")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="weights and activations of every system (default: bf16 on CUDA, float32 on the CPU)")
    p.add_argument("--threads", type=int, help="torch threads (CPU); default: torch's choice")
    p.add_argument("--repeats", type=int, help="timed runs per system and batch, round-robin; the best counts")
    p.add_argument("--profile", action="store_true", help="profile one engine run per batch (top kernels)")
    p.add_argument("--out", type=Path, help="JSON results (a .md table is written beside it)")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.model = args.model or preset["model"]
    args.device = args.device or preset["device"]
    args.batches = [int(b) for b in args.batches.split(",")] if args.batches else preset["batches"]
    args.prompt_len = args.prompt_len or preset["prompt_len"]
    args.new_tokens = args.new_tokens or preset["new_tokens"]
    args.systems = args.systems.split(",") if args.systems else preset["systems"]
    args.repeats = args.repeats or preset["repeats"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    for noisy in ("transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    model, _ = build_model(args.model, args.device, getattr(torch, args.dtype) if args.dtype else None)
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, vocab - 100, (max(args.batches), args.prompt_len), generator=g).tolist()
    bw = bandwidth_gbps(args.device)
    log.info("model %s, %.0fM params, bandwidth %.0f GB/s", args.model, sum(p.numel() for p in model.parameters()) / 1e6, bw)
    results: list[Result] = []
    measure(args, model, prompts, bw, args.out, results)
    print(markdown(report(args, model, bw, results)))


if __name__ == "__main__":
    main()
