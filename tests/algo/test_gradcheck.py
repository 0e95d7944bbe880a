"""torch.autograd.gradcheck in float64 for every differentiable loss and helper."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from agentrl import algo
from agentrl.algo import PolicyLossConfig

F64 = torch.float64
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def _policy_inputs():
    # log ratios kept at least 0.05 away from every clip bound (0.8, 1.2, 1.28, dual 3) so the
    # finite differences never cross one; both clipped and unclipped tokens are present
    log_r = torch.tensor(
        [[math.log(0.5), math.log(0.9), math.log(1.1), math.log(1.5)],
         [math.log(0.7), math.log(1.05), math.log(3.5), math.log(1.4)]], dtype=F64)
    old = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.2, -0.8, -4.0]], dtype=F64)
    adv = torch.tensor([[1.0, -1.0, 0.5, -2.0], [-1.5, 2.0, -1.0, 1.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    rollout = old + torch.tensor([[0.1, -0.2, 0.9, 0.0], [0.05, -0.1, 0.3, 0.0]], dtype=F64)
    return (old + log_r).requires_grad_(), old, adv, mask, rollout


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extras", [{}, {"eps_clip_high": 0.28, "eps_clip_c": 3.0, "use_tis": True}])
def test_ppo_clip_loss_gradcheck(mode, extras):
    lp, old, adv, mask, rollout = _policy_inputs()
    cfg = PolicyLossConfig(aggregation=mode, max_length_norm=6, **extras)
    fn = lambda x: algo.ppo_clip_loss(x, old, adv, mask, config=cfg, rollout_logprobs=rollout)[0]  # noqa: E731
    assert gradcheck(fn, (lp,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_gspo_loss_gradcheck(mode):
    # the GSPO-token gradient equals the true sequence-level gradient when the advantage is
    # constant over each episode, which is what the numerical derivative sees. (Per-token TIS
    # weights differ within an episode, so with TIS only the token form is defined: not checked.)
    lp, old, _, mask, rollout = _policy_inputs()
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4], dtype=F64)
    cfg = PolicyLossConfig(aggregation=mode, eps_clip=0.3, eps_clip_high=0.5, eps_clip_c=3.0)
    fn = lambda x: algo.gspo_loss(x, old, adv, mask, config=cfg, rollout_logprobs=rollout)[0]  # noqa: E731
    assert gradcheck(fn, (lp,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_tis", [False, True])
def test_cispo_loss_gradcheck(mode, use_tis):
    # CISPO's weight is a stop-gradient: inside the clip range its gradient is the true derivative of its
    # value -A r, which gradcheck checks (with masked tokens, TIS weights and every aggregation); above the
    # range the weight is a constant whose gradient test_losses checks by hand.
    lp, old, adv, mask, rollout = _policy_inputs()
    cfg = PolicyLossConfig(aggregation=mode, max_length_norm=6, eps_clip_high=3.0, use_tis=use_tis)
    fn = lambda x: algo.cispo_loss(x, old, adv, mask, config=cfg, rollout_logprobs=rollout)[0]  # noqa: E731
    assert gradcheck(fn, (lp,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_value_loss_gradcheck(clip):
    values = torch.tensor([[1.0, 0.8, -1.0, 0.2], [0.1, -0.3, 0.4, 2.0]], dtype=F64, requires_grad=True)
    old = torch.zeros(2, 4, dtype=F64)
    ret = torch.tensor([[0.0, 1.0, 0.3, 0.5], [1.0, 0.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    fn = lambda v: algo.value_loss(v, old, ret, mask, clip=clip)[0]  # noqa: E731
    assert gradcheck(fn, (values,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
def test_kl_penalty_gradcheck(kind):
    lp = torch.tensor([[-1.0, -2.0, -0.2], [-0.7, -3.0, -1.1]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.4, -1.0, -0.3], [-0.7, -2.5, -4.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    fn = lambda a, b: algo.aggregate(algo.kl_penalty(a, b, kind), mask)  # noqa: E731
    assert gradcheck(fn, (lp, ref), eps=1e-6, atol=1e-6)


def test_entropy_gradcheck():
    logits = torch.randn(2, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert gradcheck(lambda z: algo.entropy_from_logits(z, chunk_size=2), (logits,), eps=1e-6, atol=1e-6)


def test_logprobs_from_logits_gradcheck():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, dtype=F64, generator=gen).requires_grad_()
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    fn = lambda z: algo.logprobs_from_logits(z, labels, chunk_size=4)  # noqa: E731
    assert gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


def test_logprobs_and_entropy_gradcheck():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, dtype=F64, generator=gen).requires_grad_()
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    fn = lambda z: algo.logprobs_and_entropy(z, labels, chunk_size=4)  # noqa: E731
    assert gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)
