"""One rank of a multi-process check of the Megatron backend against single-process references.

Run under torchrun (CUDA + NCCL on GPUs, gloo on CPUs with the test shim)::

    torchrun --nproc-per-node 2 tests/megatron/parallel_worker.py --tp 2 --out /tmp/tp2

Each rank builds the same seeded random Qwen3-shaped model (4 heads, 2 KV groups, tied
embeddings, a vocabulary of 251 so that TP pads it) and checks, against the unsharded HF model
(TP = PP = DP = 1 by construction):

* HF -> Megatron -> HF conversion is exact under this layout;
* gathered vocabulary-parallel logits and log-probs equal the HF ones (PP = 1 only);
* ``MegatronTrainer`` with megatron-core's distributed optimizer gives the torch backend's
  loss, grad norm and log-probs over two optimiser steps, and the same pushed weights.

Rank 0 writes ``result.json`` (max abs differences) to ``--out``; the test compares them with
tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

VOCAB = 251


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--sequence-parallel", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        from megatron_cpu_shim import install

        install()
    from megatron_helpers import random_hf_model, random_samples

    from agentrl import algo
    from agentrl.train.base import TrainConfig
    from agentrl.train.batch import RolloutBatch
    from agentrl.train.megatron.convert import export_hf_weights, load_hf_weights
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model
    from agentrl.train.megatron.parallel import init_parallel
    from agentrl.train.megatron.shape import ModelShape
    from agentrl.train.megatron.trainer import MegatronTrainer, MegatronTrainerConfig
    from agentrl.train.torch_trainer import TorchTrainer

    layout = init_parallel(args.tp, args.pp)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    result: dict[str, float] = {"world": dist.get_world_size(), "dp": layout.data_parallel}

    hf = random_hf_model("qwen3", vocab_size=VOCAB, seed=11, num_hidden_layers=4)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(0.3)
    shape = ModelShape.from_hf(hf.config)

    # 1. conversion round trip under this layout
    options = MegatronModelConfig(dtype="float32", attention="sdpa", sequence_parallel=args.sequence_parallel)
    model = build_gpt_model(hf.config, options)
    load_hf_weights(model, shape, hf.state_dict())
    exported = dict(export_hf_weights(model, shape, gather_pipeline=True))
    want = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    assert sorted(exported) == sorted(want), sorted(set(want) ^ set(exported))
    result["roundtrip_max_diff"] = max((exported[k].cpu() - v).abs().max().item() for k, v in want.items())

    # 2. logits and vocabulary-parallel log-probs (a single pipeline stage only)
    if args.pp == 1:
        from agentrl.train.megatron.logprobs import vocab_parallel_logprobs
        from megatron.core import parallel_state as ps

        ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            shard = model.eval()(ids.to(device), None, None)  # [b, s, V/tp]
            pieces = [torch.empty_like(shard) for _ in range(args.tp)]
            dist.all_gather(pieces, shard.contiguous(), group=ps.get_tensor_model_parallel_group())
            logits = torch.cat(pieces, dim=-1)[..., :VOCAB].cpu()
            ref = hf(ids).logits
            result["logits_max_diff"] = (logits - ref).abs().max().item()
            targets = torch.roll(ids, -1, dims=1)
            lp, _ = vocab_parallel_logprobs(shard, targets.to(device), vocab_size=VOCAB)
            ref_lp = torch.log_softmax(ref, -1).gather(-1, targets[..., None])[..., 0]
            result["logprobs_max_diff"] = (lp.cpu() - ref_lp).abs().max().item()
    del model

    # 3. the trainer against the torch backend (one process, no parallelism)
    folder = out / "hf"
    if dist.get_rank() == 0:
        hf.save_pretrained(folder)
    dist.barrier()
    cfg = TrainConfig(lr=3e-3, max_tokens_per_gpu=40, use_kl_loss=True, kl_loss_coef=0.1, entropy_coef=0.01)

    class Tok:
        pad_token_id = 0

    meg = MegatronTrainer(str(folder), cfg, MegatronTrainerConfig(
        tensor_parallel=args.tp, pipeline_parallel=args.pp, sequence_parallel=args.sequence_parallel,
        attention="sdpa", optimizer="megatron", dtype=args.dtype), tokenizer=Tok())
    ref_model = hf.to(device=device, dtype=dtype)
    torch_trainer = TorchTrainer(ref_model, cfg, tokenizer=Tok(), device=str(device), dtype=dtype)
    from agentrl.train.megatron.trainer import broadcast_batch

    mine = RolloutBatch.from_samples(random_samples(8, VOCAB, seed=3)) if dist.get_rank() == 0 else None
    shared = broadcast_batch(mine)
    result["broadcast_ok"] = float(torch.equal(shared.loss_mask, RolloutBatch.from_samples(random_samples(8, VOCAB, seed=3)).loss_mask))
    samples = shared.samples
    batches = []
    for trainer in (torch_trainer, meg):
        b = RolloutBatch.from_samples(samples)
        b.old_logprobs = trainer.compute_logprobs(b)
        b.ref_logprobs = trainer.compute_ref_logprobs(b)
        b.advantages = algo.get_advantage_estimator("grpo")(b.rewards, b.group_ids, b.loss_mask)
        batches.append(b)
    result["old_logprobs_max_diff"] = (batches[0].old_logprobs - batches[1].old_logprobs).abs().max().item()
    for step in range(2):
        mt, mm = torch_trainer.train_step(batches[0]), meg.train_step(batches[1])
        for key in ("train/loss", "train/grad_norm", "train/kl_loss", "train/entropy"):
            result[f"step{step}_{key}_diff"] = abs(mt[key] - mm[key])
            result[f"step{step}_{key}"] = mm[key]
    result["logprobs_after_max_diff"] = (torch_trainer.compute_logprobs(batches[0])
                                         - meg.compute_logprobs(batches[1])).abs().max().item()
    pushed = dict(meg.weights())
    reference = dict(torch_trainer.weights())
    result["weights_max_diff"] = max((pushed[k].float().cpu() - reference[k].float().cpu()).abs().max().item()
                                     for k in pushed)
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
