"""Step-time breakdown of GRPO training with the embedded engine and the torch trainer.

Runs ``agentrl.loop.train`` for a few rollouts on a random model of a real shape (e.g. the
Qwen2.5-0.5B shape) and reports, per rollout, the time in rollout (generation + environment),
training, and weight sync, with generated tokens/s. Rewards come from a reward function that
varies between episodes of a random model (so gradients are not zero); the engine ignores the
end-of-sequence token, so responses run to ``--response-len`` unless the model emits the chat
template's end-of-turn token.

    python bench/train_step_breakdown.py --shape qwen2.5-0.5b --rollouts 3 --out bench/results   # GPU
    python bench/train_step_breakdown.py --shape tiny --rollouts 3 --batch 4 --samples 4 --response-len 32  # CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import device_tag, save  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", help="a key of agentrl.testing.tiny.BENCH_SHAPES, or 'tiny'")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, via its alias)")
    p.add_argument("--rollouts", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="prompts per rollout")
    p.add_argument("--samples", type=int, default=8, help="episodes per prompt")
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--max-tokens-per-gpu", type=int, default=8192)
    p.add_argument("--out", default=None, help="folder for train_step_breakdown_<device>.json/.md")
    args = p.parse_args()

    from agentrl.config import parse_args
    from agentrl.loop import train
    from agentrl.testing.tiny import BENCH_SHAPES, make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="agentrl-bench-"))
    shape = {} if args.shape == "tiny" else BENCH_SHAPES[args.shape]
    model_dir = make_tiny_model(work / "model", "qwen2", tokenizer=args.tokenizer, **shape)
    reward = work / "reward.py"
    reward.write_text("def reward(sample):\n    ids = sample.response_ids\n"
                      "    return sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)\n")
    cfg = parse_args([
        "--config", str(ROOT / "recipes/quickstart/config.yaml"), "--model-path", str(model_dir),
        "--prompt-data", str(ROOT / "recipes/quickstart/train.jsonl"), "--eval-prompt-data", "sums",
        str(ROOT / "recipes/quickstart/test.jsonl"), "--eval-max-prompts", "1", "--eval-interval", "1000",
        "--num-rollout", str(args.rollouts), "--rollout-batch-size", str(args.batch),
        "--n-samples-per-prompt", str(args.samples), "--rollout-max-response-len", str(args.response_len),
        "--rollout-max-context-len", str(args.response_len + 64), "--max-tokens-per-gpu", str(args.max_tokens_per_gpu),
        "--engine-max-batch-size", str(args.batch * args.samples), "--custom-rm-path", f"{reward}:reward",
        "--output-dir", str(work / "run"), "--lr", "1e-6",
    ])
    cfg.checkpoint.save = None
    cfg.rollout.sampling.ignore_eos = True
    train(cfg)
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_time" in r]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or 'cpu'} CPU"
    table = []
    for r in steps:
        gen = r["rollout/generated_tokens"]
        table.append({"rollout": r["step"], "rollout_s": r["perf/rollout_time"], "train_s": r["perf/train_time"],
                      "logprobs_s": r.get("perf/logprobs_time", 0.0), "sync_s": r["perf/sync_time"],
                      "step_s": r["perf/step_time"], "generated_tokens": gen,
                      "gen_tok_per_s": gen / r["perf/rollout_time"], "reward": r["rollout/reward_mean"],
                      "rollout_train_abs_diff": r.get("train/rollout_train_abs_diff")})
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": device,
            "torch": torch.__version__, "shape": args.shape, "params": _params(model_dir),
            "episodes_per_rollout": args.batch * args.samples, "response_len": args.response_len,
            "command": "python " + " ".join(sys.argv)}
    md = _markdown(table, meta)
    print(md)
    if args.out:
        save(args.out, f"train_step_breakdown_{device_tag(device)}", {"meta": meta, "rollouts": table}, md)


def _params(model_dir: Path) -> int:
    import math

    from safetensors import safe_open

    total = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def _markdown(table: list[dict], meta: dict) -> str:
    head = (f"# GRPO step-time breakdown ({meta['device']})\n\n{meta['date']}; torch {meta['torch']}; "
            f"shape {meta['shape']} ({meta['params'] / 1e6:.0f}M params, random weights); "
            f"{meta['episodes_per_rollout']} episodes x {meta['response_len']} generated tokens per rollout; "
            f"embedded engine + torch trainer, colocated, one process.\n\n`{meta['command']}`\n\n")
    cols = ["rollout", "rollout_s", "logprobs_s", "train_s", "sync_s", "step_s", "generated_tokens", "gen_tok_per_s",
            "reward", "rollout_train_abs_diff"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return head + "\n".join(lines) + "\n\nThe first rollout includes one-time warm-up (CUDA graphs, allocator).\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.2f}"
    return str(v)


if __name__ == "__main__":
    main()
