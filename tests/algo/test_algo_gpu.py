"""The algorithms (the RL objective included) on a CUDA device: same numbers as on the CPU, and chunked
logits memory."""

import time

import pytest
import torch

from agentrl import algo
from agentrl.algo import PolicyLossConfig

pytestmark = pytest.mark.gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_losses_match_the_cpu():
    gen = torch.Generator().manual_seed(0)
    b, t, v = 4, 16, 50
    lp = -torch.rand(b, t, generator=gen)
    old = lp + 0.2 * torch.randn(b, t, generator=gen)
    rollout = old + 0.2 * torch.randn(b, t, generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.2).long()
    rewards = torch.randint(0, 2, (b,), generator=gen).float()
    groups = torch.tensor([0, 0, 1, 1])
    logits = torch.randn(b, t, v, generator=gen)
    labels = torch.randint(0, v, (b, t), generator=gen)
    values = torch.randn(b, t, generator=gen)
    entropy = 3 * torch.rand(b, t, generator=gen)
    cfg = PolicyLossConfig(eps_clip_high=0.28, eps_clip_c=3.0, use_tis=True, aggregation="seq_mean_token_mean")

    def run(device):
        d = lambda x: x.to(device)  # noqa: E731
        out = {}
        for name in algo.ADVANTAGE_ESTIMATORS:
            kw = {"values": d(values)} if name in algo.CRITIC_ESTIMATORS else {}
            out[name] = algo.get_advantage_estimator(name)(d(rewards), d(groups), d(mask), **kw).cpu()
        adv = algo.grpo(d(rewards), d(groups), d(mask))
        denom = algo.aggregation_denominator(mask, cfg.aggregation)  # stays on the CPU, as a trainer's may
        for name, fn in algo.POLICY_LOSSES.items():
            x = lp.detach().to(device).clone().requires_grad_()
            loss, metrics = fn(x, d(old), adv, d(mask), config=cfg, rollout_logprobs=d(rollout), denominator=denom)
            loss.backward()
            out[name] = loss.detach().cpu()
            out[name + "_grad"] = x.grad.cpu()
            out.update({f"{name}_{k}": m.cpu() for k, m in metrics.items()})
        objective = algo.ObjectiveConfig(policy=cfg, use_kl_loss=True, kl_loss_coef=0.1, entropy_coef=0.01)
        x, h = (y.detach().to(device).clone().requires_grad_() for y in (lp, entropy))
        loss, parts = algo.rl_objective(x, adv, d(mask), config=objective, old_logprobs=d(old),
                                        rollout_logprobs=d(rollout), ref_logprobs=d(old), entropy=h,
                                        denominator=denom, num_tokens=float(mask.sum()))
        loss.backward()
        out.update(objective=loss.detach().cpu(), objective_grad=x.grad.cpu(), objective_entropy_grad=h.grad.cpu())
        out.update({f"objective_{k}": m.cpu() for k, m in parts.items()})
        z = logits.detach().to(device).clone().requires_grad_()
        (algo.entropy_from_logits(z).sum() + algo.logprobs_from_logits(z, d(labels)).sum()).backward()
        out["logits_grad"] = z.grad.cpu()
        out["kl"] = algo.kl_penalty(d(lp), d(old), "low_var_kl").cpu()
        out["value_loss"] = algo.value_loss(d(values), d(values) * 0, d(values) + 1, d(mask))[0].cpu()
        return out

    cpu, gpu = run("cpu"), run("cuda")
    assert cpu.keys() == gpu.keys()
    for key in cpu:
        torch.testing.assert_close(gpu[key], cpu[key], rtol=1e-4, atol=1e-5, msg=key)


@cuda
def test_logits_memory_stays_chunked():
    """Forward + backward on bf16 logits needs about one gradient buffer plus a few chunks."""
    b, t, v = 4, 2048, 32768
    logits = torch.randn(b, t, v, device="cuda", dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, v, (b, t), device="cuda")
    logits_bytes = logits.numel() * logits.element_size()

    def measure(fn):
        logits.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn().sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, time.perf_counter() - start

    def logprobs_with_entropy_metric():
        with torch.no_grad():
            algo.entropy_from_logits(logits)
        return algo.logprobs_from_logits(logits, labels)

    def fused():
        lp, h = algo.logprobs_and_entropy(logits, labels)
        return lp + 0.01 * h

    def separate():
        return algo.logprobs_from_logits(logits, labels) + 0.01 * algo.entropy_from_logits(logits)

    def naive():
        logp = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) + 0.01 * entropy

    cases = {"logprobs": logprobs_with_entropy_metric, "fused": fused, "separate": separate, "naive": naive}
    for fn in cases.values():
        measure(fn)  # warm-up
    results = {name: measure(fn) for name, fn in cases.items()}
    print(f"\nlogits [{b}, {t}, {v}] bf16 = {logits_bytes / 2**20:.0f} MiB; peak extra memory, time (fwd+bwd):")
    for name, (nbytes, seconds) in results.items():
        print(f"  {name:9s} {nbytes / 2**20:6.0f} MiB  {seconds * 1e3:6.1f} ms")
    chunk_block = 512 * v * 4  # one float32 [chunk, V] block
    for name in ("logprobs", "fused"):
        assert results[name][0] <= logits_bytes + 8 * chunk_block, name  # the bf16 gradient + a few blocks
    assert results["fused"][0] < results["naive"][0] / 3
