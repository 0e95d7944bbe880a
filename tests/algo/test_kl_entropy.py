"""KL estimators, entropy and log-probabilities from logits."""

import math

import pytest
import torch

from agentrl import algo

T = torch.tensor


def test_kl_estimators_by_hand():
    lp = T([[-1.0, -2.0]])
    ref = T([[-2.0, -1.5]])  # log_r = ref - lp = -1, .5
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k1"), T([[1.0, -0.5]]))
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k2"), T([[0.5, 0.125]]))
    k3 = [math.exp(-1) - 1 + 1, math.exp(0.5) - 1 - 0.5]
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "k3"), T([k3]))
    torch.testing.assert_close(algo.kl_penalty(lp, ref, "low_var_kl"), T([k3]))


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
def test_kl_zero_on_policy_with_zero_gradient(kind):
    lp = torch.tensor([[-0.3, -1.7, -4.0]], requires_grad=True)
    kl = algo.kl_penalty(lp, lp.detach(), kind)
    assert (kl == 0).all()
    algo.aggregate(kl, torch.ones(1, 3)).backward()
    # k1 = logp - ref has gradient 1 (per token, / n); the others are 0 at log_r = 0
    expected = torch.ones(1, 3) / 3 if kind == "k1" else torch.zeros(1, 3)
    torch.testing.assert_close(lp.grad, expected)


def test_low_var_kl_is_clamped():
    lp = T([[0.0, 0.0, 0.0]])
    ref = T([[30.0, -30.0, 1.0]])
    out = algo.kl_penalty(lp, ref, "low_var_kl")
    # log_r 30 -> 20 -> e^20 - 21 -> 10; -30 -> -20 -> e^-20 + 19 -> 10; 1 -> e - 2
    torch.testing.assert_close(out, T([[10.0, 10.0, math.e - 2]]))
    assert algo.kl_penalty(lp, ref, "k3")[0, 0] > 1e12


def test_kl_loss_mask_and_masked_infinities():
    lp = T([[-1.0, 0.0]])
    ref = T([[-1.5, float("-inf")]])
    out = algo.kl_penalty(lp, ref, "k3", loss_mask=T([[1, 0]]))
    assert torch.isfinite(out).all() and out[0, 1] == 0


def test_kl_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        algo.kl_penalty(torch.zeros(1, 2), torch.zeros(1, 3))


def test_entropy_by_hand():
    logits = torch.zeros(1, 2, 4)
    logits[0, 1] = T([0.0, 0.0, -1e4, -1e4])  # two equally likely tokens
    torch.testing.assert_close(algo.entropy_from_logits(logits), T([[math.log(4), math.log(2)]]))


@pytest.mark.parametrize("chunk_size", [1, 3, 512])
def test_entropy_matches_reference_value_and_gradient(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=gen)).requires_grad_()
    weights = torch.randn(2, 5, generator=gen)
    ours = algo.entropy_from_logits(logits, chunk_size=chunk_size)
    (ours * weights).sum().backward()
    grad_ours = logits.grad.clone()
    logits.grad = None
    ref = torch.distributions.Categorical(logits=logits).entropy()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref.detach())
    torch.testing.assert_close(grad_ours, logits.grad)


def test_entropy_of_low_precision_logits_is_float32():
    logits = torch.randn(2, 3, 7).to(torch.bfloat16)
    out = algo.entropy_from_logits(logits)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    torch.testing.assert_close(out, torch.distributions.Categorical(logits=logits.float()).entropy())


@pytest.mark.parametrize("chunk_size", [1, 4, 512])
def test_logprobs_from_logits_matches_log_softmax(chunk_size):
    gen = torch.Generator().manual_seed(1)
    logits = (2 * torch.randn(3, 4, 9, generator=gen)).requires_grad_()
    labels = torch.randint(0, 9, (3, 4), generator=gen)
    weights = torch.randn(3, 4, generator=gen)
    ours = algo.logprobs_from_logits(logits, labels, chunk_size=chunk_size)
    (ours * weights).sum().backward()
    grad_ours = logits.grad.clone()
    logits.grad = None
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, ref.detach())
    torch.testing.assert_close(grad_ours, logits.grad)


def test_chunk_and_label_errors():
    with pytest.raises(ValueError, match="chunk_size"):
        algo.entropy_from_logits(torch.zeros(1, 1, 2), chunk_size=0)
    with pytest.raises(ValueError, match="labels must have the shape"):
        algo.logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("chunk_size", [2, 512])
def test_logprobs_and_entropy_fused_equals_separate(chunk_size):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, generator=gen).requires_grad_()
    labels = torch.randint(0, 7, (2, 3), generator=gen)
    w1, w2 = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    lp, h = algo.logprobs_and_entropy(logits, labels, chunk_size=chunk_size)
    ((lp * w1).sum() + (h * w2).sum()).backward()
    fused_grad = logits.grad.clone()
    logits.grad = None
    lp2 = algo.logprobs_from_logits(logits, labels, chunk_size=chunk_size)
    h2 = algo.entropy_from_logits(logits, chunk_size=chunk_size)
    ((lp2 * w1).sum() + (h2 * w2).sum()).backward()
    torch.testing.assert_close(lp, lp2)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(fused_grad, logits.grad)
    # only one output in the loss: the other's zero gradient adds nothing
    logits.grad = None
    algo.logprobs_and_entropy(logits, labels, chunk_size=chunk_size)[0].sum().backward()
    only_lp = logits.grad.clone()
    logits.grad = None
    algo.logprobs_from_logits(logits, labels, chunk_size=chunk_size).sum().backward()
    torch.testing.assert_close(only_lp, logits.grad)
