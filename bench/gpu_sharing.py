"""One GPU, two workloads: how long a decode step takes while a trainer's kernels run beside it.

The decode step is a CUDA graph of small kernels shaped like a 0.5B model's (24 layers of four
``[batch, hidden] @ [hidden, hidden]`` GEMMs with a SiLU and a residual add each; default batch
256, hidden 896); the trainer is a thread issuing large bf16 GEMMs without pause (``--gemm`` square). Each
configuration times ``--steps`` replays of the step, each waited for, as the engine waits for its
tokens, and counts the trainer's GEMMs meanwhile:

* ``alone``: no trainer;
* ``shared``: the trainer's kernels on every SM;
* ``shared, decode high priority``: the same, the decode on a stream of the highest priority;
* ``trainer on N SMs``: the trainer's stream in a CUDA green context of N SMs
  (:func:`agentrl.utils.sm_share.confined_stream`, what ``--trainer-sms N`` does).

    python bench/gpu_sharing.py --sms 66,88,100,116 --out bench/results
"""

from __future__ import annotations

import argparse
import datetime
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import device_tag, save  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sms", default="66,88,100,116", help="comma-separated SM counts for the trainer")
    p.add_argument("--batch", type=int, default=256, help="rows of the decode step")
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--gemm", type=int, default=8192, help="side of the trainer's square GEMMs")
    p.add_argument("--steps", type=int, default=200, help="decode steps timed per configuration")
    p.add_argument("--out", default=None, help="folder for gpu_sharing_<device>.json/.md")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_sharing.py needs a CUDA GPU")
    from agentrl.utils.sm_share import confined_stream, sm_count

    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    total_sms = sm_count(dev)
    counts = [int(s) for s in args.sms.split(",") if s.strip()]
    gen = torch.Generator(device=dev).manual_seed(0)
    big = torch.randn(args.gemm, args.gemm, device=dev, dtype=torch.bfloat16, generator=gen)
    weights = [torch.randn(args.hidden, args.hidden, device=dev, dtype=torch.bfloat16, generator=gen) * 0.03
               for _ in range(4)]
    x0 = torch.randn(args.batch, args.hidden, device=dev, dtype=torch.bfloat16, generator=gen)

    def step() -> torch.Tensor:
        x = x0
        for _ in range(args.layers):
            for w in weights:
                x = torch.nn.functional.silu(x @ w) + x
        return x

    side = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def decode_ms(stream: torch.cuda.Stream) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.cuda.stream(stream):
            for _ in range(args.steps):
                graph.replay()
                stream.synchronize()
        return (time.perf_counter() - start) / args.steps * 1e3

    def measure(label: str, train_stream: torch.cuda.Stream | None, decode_stream: torch.cuda.Stream) -> dict:
        stop, done = threading.Event(), [0]

        def train() -> None:
            torch.cuda.set_device(dev)
            with torch.cuda.stream(train_stream):
                while not stop.is_set():
                    for _ in range(4):
                        big @ big
                    train_stream.synchronize()
                    done[0] += 4

        thread = threading.Thread(target=train) if train_stream is not None else None
        if thread:
            thread.start()
            time.sleep(0.3)  # the trainer is running
        start, before = time.perf_counter(), done[0]
        ms = decode_ms(decode_stream)
        seconds, gemms = time.perf_counter() - start, done[0] - before
        stop.set()
        if thread:
            thread.join()
        tflops = 2 * args.gemm ** 3 * gemms / seconds / 1e12 if thread else None
        row = {"config": label, "decode_ms": ms, "trainer_tflops": tflops}
        print(f"{label}: decode {ms:.2f} ms/step" + (f", trainer {tflops:.0f} TFLOP/s" if tflops else ""), flush=True)
        return row

    default = torch.cuda.current_stream(dev)
    rows = [measure("alone", None, default)]
    trainer_alone = _gemm_tflops(big, torch.cuda.Stream(device=dev))
    rows.append({"config": "trainer alone", "decode_ms": None, "trainer_tflops": trainer_alone})
    rows.append(measure("shared", torch.cuda.Stream(device=dev), default))
    rows.append(measure("shared, decode high priority", torch.cuda.Stream(device=dev),
                        torch.cuda.Stream(device=dev, priority=-100)))
    for n in counts:
        stream = confined_stream(dev, n)
        rows.append(measure(f"trainer on {n} of {total_sms} SMs", stream, default)
                    | {"trainer_alone_tflops": _gemm_tflops(big, stream)})
    device = torch.cuda.get_device_name(dev)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": device,
            "torch": torch.__version__, "sms": total_sms, "batch": args.batch, "hidden": args.hidden,
            "layers": args.layers, "gemm": args.gemm, "steps": args.steps, "command": "python " + " ".join(sys.argv)}
    md = _markdown(rows, meta)
    print(md)
    if args.out:
        save(args.out, f"gpu_sharing_{device_tag(device)}", {"meta": meta, "rows": rows}, md)


def _gemm_tflops(big: torch.Tensor, stream: torch.cuda.Stream, n: int = 40) -> float:
    with torch.cuda.stream(stream):
        for _ in range(4):
            big @ big
        stream.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            big @ big
        stream.synchronize()
    return 2 * big.shape[0] ** 3 * n / (time.perf_counter() - start) / 1e12


def _markdown(rows: list[dict], meta: dict) -> str:
    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    alone = rows[0]["decode_ms"]
    lines = [f"# One GPU shared by decode and training ({meta['device']})", "",
             f"{meta['date']}; torch {meta['torch']}; {meta['sms']} SMs. Decode step: a CUDA graph of "
             f"{meta['layers']} x 4 GEMMs [{meta['batch']}, {meta['hidden']}] @ [{meta['hidden']}, {meta['hidden']}] "
             f"+ SiLU, bf16, each step waited for. Trainer: bf16 GEMMs {meta['gemm']}^3 back to back on a thread.", "",
             f"`{meta['command']}`", "",
             "| configuration | decode ms/step | vs alone | trainer TFLOP/s (beside decode) | trainer TFLOP/s (alone, same SMs) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = None if r["decode_ms"] is None else r["decode_ms"] / alone
        alone_tf = r.get("trainer_alone_tflops", r["trainer_tflops"] if r["decode_ms"] is None else None)
        beside = None if r["decode_ms"] is None else r["trainer_tflops"]
        lines.append(f"| {r['config']} | {cell(r['decode_ms'], '.2f')} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{cell(beside, '.0f')} | {cell(alone_tf, '.0f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
