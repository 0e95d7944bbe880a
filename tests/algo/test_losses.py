"""Policy and value losses against values and gradients worked out by hand."""

import math

import pytest
import torch

from agentrl import algo
from agentrl.algo import PolicyLossConfig

T = torch.tensor
F64 = torch.float64


def leaf(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, requires_grad=True)


# ----------------------------------------------------------------------------------- PPO-clip


@pytest.mark.parametrize("name", ["ppo", "gspo", "cispo"])
def test_on_policy_first_step(name):
    lp = leaf([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]])
    adv = T([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    loss, m = algo.get_policy_loss(name)(lp, lp.detach(), adv, mask)
    # ratio 1 everywhere: loss = -mean(A) over the 5 tokens = -(3 - 4) / 5
    torch.testing.assert_close(loss, T(0.2))
    for key in ("pg_clipfrac", "pg_clipfrac_low", "pg_clipfrac_high", "pg_clipfrac_dual", "ppo_kl"):
        assert m[key].item() == 0.0, key
    for key in ("ratio_mean", "ratio_min", "ratio_max"):
        assert m[key].item() == 1.0, key
    loss.backward()
    # d/dlogp (-A r) = -A r = -A; divided by 5 tokens
    torch.testing.assert_close(lp.grad, T([[-0.2, -0.2, -0.2], [0.4, 0.4, 0.0]]))


def test_ppo_clipping_by_hand():
    # ratios 1.5, .5, .5, 1.5 with advantages +1, +1, -1, -1, eps 0.2
    log_r = [math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.5)]
    lp = leaf([log_r])
    adv = T([[1.0, 1.0, -1.0, -1.0]])
    loss, m = algo.ppo_clip_loss(lp, torch.zeros(1, 4), adv, torch.ones(1, 4))
    # per token: -1.2 (clipped high), -.5, +.8 (clipped low), +1.5
    torch.testing.assert_close(loss, T((-1.2 - 0.5 + 0.8 + 1.5) / 4))
    loss.backward()
    # gradient -A r / 4 on unclipped tokens, 0 on clipped
    torch.testing.assert_close(lp.grad, T([[0.0, -0.5 / 4, 0.0, 1.5 / 4]]))
    assert m["pg_clipfrac_high"].item() == 0.25
    assert m["pg_clipfrac_low"].item() == 0.25
    assert m["pg_clipfrac"].item() == 0.5
    torch.testing.assert_close(m["ratio_max"], T(1.5))
    torch.testing.assert_close(m["ratio_min"], T(0.5))
    torch.testing.assert_close(m["ppo_kl"], T(-sum(log_r) / 4))


def test_clip_higher_is_asymmetric():
    cfg = PolicyLossConfig(eps_clip=0.2, eps_clip_high=0.28)
    lp = leaf([[math.log(1.25), math.log(1.3), math.log(0.75)]])
    adv = T([[1.0, 1.0, -1.0]])
    loss, m = algo.ppo_clip_loss(lp, torch.zeros(1, 3), adv, torch.ones(1, 3), config=cfg)
    # 1.25 < 1.28: unclipped (would be clipped with 0.2); 1.3 -> 1.28; .75 < .8 -> .8
    torch.testing.assert_close(loss, T((-1.25 - 1.28 + 0.8) / 3))
    loss.backward()
    torch.testing.assert_close(lp.grad, T([[-1.25 / 3, 0.0, 0.0]]))
    torch.testing.assert_close(m["pg_clipfrac_high"], T(1 / 3))
    torch.testing.assert_close(m["pg_clipfrac_low"], T(1 / 3))


def test_dual_clip_caps_negative_advantage_loss():
    cfg = PolicyLossConfig(eps_clip=0.2, eps_clip_c=3.0)
    lp = leaf([[math.log(4.0), math.log(2.5), math.log(4.0)]])
    adv = T([[-1.0, -1.0, 1.0]])
    loss, m = algo.ppo_clip_loss(lp, torch.zeros(1, 3), adv, torch.ones(1, 3), config=cfg)
    # A<0, r=4 > c: -A c = 3 (no gradient); A<0, r=2.5 < c: -A r = 2.5; A>0, r=4: -1.2
    torch.testing.assert_close(loss, T((3.0 + 2.5 - 1.2) / 3))
    loss.backward()
    torch.testing.assert_close(lp.grad, T([[0.0, 2.5 / 3, 0.0]]))
    torch.testing.assert_close(m["pg_clipfrac_dual"], T(1 / 3))
    torch.testing.assert_close(m["pg_clipfrac_high"], T(1 / 3))
    # without dual clip the first token is unclipped: -A r = 4
    loss_plain, _ = algo.ppo_clip_loss(lp.detach(), torch.zeros(1, 3), adv, torch.ones(1, 3))
    torch.testing.assert_close(loss_plain, T((4.0 + 2.5 - 1.2) / 3))


def test_clipping_at_exactly_the_bounds():
    # float64, log ratios chosen so that 1 + eps_high and 1 - eps_low equal the ratios exactly
    d_high, d_low = 0.18, -0.25
    r_high, r_low = math.exp(d_high), math.exp(d_low)
    assert torch.exp(T(d_high, dtype=F64)).item() == r_high
    cfg = PolicyLossConfig(eps_clip=1.0 - r_low, eps_clip_high=r_high - 1.0)
    assert 1.0 + cfg.clip_high == r_high and 1.0 - cfg.eps_clip == r_low
    tiny = 1e-9
    lp = leaf([[d_high, d_low, d_high + tiny, d_low - tiny]], dtype=F64)
    adv = T([[2.0, -2.0, 2.0, -2.0]], dtype=F64)
    loss, m = algo.ppo_clip_loss(lp, torch.zeros(1, 4, dtype=F64), adv, torch.ones(1, 4), config=cfg)
    loss.backward()
    # at the bounds: not counted as clipped, gradient of the unclipped term -A r / 4
    # just past them: clipped, zero gradient
    expected_grad = T([[-2.0 * r_high / 4, 2.0 * r_low / 4, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(lp.grad, expected_grad)
    assert m["pg_clipfrac_high"].item() == 0.25  # only the token past the upper bound
    assert m["pg_clipfrac_low"].item() == 0.25
    # the loss value is continuous across the bound
    torch.testing.assert_close(loss, T((-2 * r_high + 2 * r_low - 2 * r_high + 2 * r_low) / 4, dtype=F64))


@pytest.mark.parametrize("name", ["ppo", "gspo", "cispo"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_masked_tokens_have_no_effect_on_loss_or_gradient(name, aggregation):
    cfg = PolicyLossConfig(aggregation=aggregation, max_length_norm=8, eps_clip_c=3.0, use_tis=True)
    fn = algo.get_policy_loss(name)
    gen = torch.Generator().manual_seed(0)
    lp = -torch.rand(2, 3, generator=gen)
    old = lp + 0.1 * torch.randn(2, 3, generator=gen)
    rollout = old + 0.1 * torch.randn(2, 3, generator=gen)
    adv = T([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    small = (lp.clone().requires_grad_(), old, adv, torch.ones(2, 3), rollout)
    # the same batch with two garbage columns and a garbage row, all masked
    def pad(x, fill):
        out = torch.full((3, 5), fill)
        out[:2, :3] = x
        return out
    mask_big = pad(torch.ones(2, 3), 0.0)
    lp_big = pad(lp, 50.0).requires_grad_()
    big = (lp_big, pad(old, -80.0), pad(adv, 1e6), mask_big, pad(rollout, -300.0))
    loss_small, m_small = fn(*small[:4], config=cfg, rollout_logprobs=small[4])
    loss_big, m_big = fn(*big[:4], config=cfg, rollout_logprobs=big[4])
    torch.testing.assert_close(loss_big, loss_small)
    for key in m_small:
        torch.testing.assert_close(m_big[key], m_small[key], msg=key)
    loss_small.backward()
    loss_big.backward()
    torch.testing.assert_close(lp_big.grad[:2, :3], small[0].grad)
    assert (lp_big.grad[2] == 0).all() and (lp_big.grad[:, 3:] == 0).all()


def test_aggregation_modes_in_the_loss_differ_as_documented():
    # on-policy, so the per-token loss is -A: row 0 has 4 tokens of A=1, row 1 one token of A=4
    lp = torch.zeros(2, 4)
    adv = T([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = T([[1, 1, 1, 1], [1, 0, 0, 0]])

    def loss(mode, max_len=None):
        cfg = PolicyLossConfig(aggregation=mode, max_length_norm=max_len)
        return algo.ppo_clip_loss(lp, lp, adv, mask, config=cfg)[0].item()

    assert loss("token_mean") == pytest.approx(-8 / 5)  # all tokens equal
    assert loss("seq_mean_token_mean") == pytest.approx(-(1 + 4) / 2)  # episodes equal
    assert loss("seq_mean_token_sum_norm", 4) == pytest.approx(-(4 / 4 + 4 / 4) / 2)  # constant length
    assert loss("seq_mean_token_sum_norm", 8) == pytest.approx(-(4 / 8 + 4 / 8) / 2)


# ------------------------------------------------------------------------------------------ TIS


def test_tis_weights_the_loss_and_reports_mismatch():
    lp = leaf([[-1.0, -1.0]])
    old = lp.detach().clone()
    rollout = T([[-1.0, -2.0]])  # exp(old - rollout) = 1, e -> capped at 2
    cfg = PolicyLossConfig(use_tis=True, tis_cap=2.0)
    loss, m = algo.ppo_clip_loss(lp, old, torch.ones(1, 2), torch.ones(1, 2), config=cfg, rollout_logprobs=rollout)
    torch.testing.assert_close(loss, T(-(1.0 + 2.0) / 2))
    loss.backward()
    torch.testing.assert_close(lp.grad, T([[-0.5, -1.0]]))  # weights are constants
    torch.testing.assert_close(m["tis_clipfrac"], T(0.5))
    torch.testing.assert_close(m["tis_weight_mean"], T(1.5))
    torch.testing.assert_close(m["rollout_train_abs_diff"], T(0.5))
    torch.testing.assert_close(m["rollout_train_kl"], T((math.e - 2.0) / 2))  # k3 at log r = 0 and 1


def test_rollout_logprobs_without_tis_only_add_metrics():
    lp = torch.zeros(1, 2)
    loss, m = algo.ppo_clip_loss(lp, lp, torch.ones(1, 2), torch.ones(1, 2), rollout_logprobs=T([[0.0, -1.0]]))
    torch.testing.assert_close(loss, T(-1.0))
    assert "tis_clipfrac" not in m
    torch.testing.assert_close(m["rollout_train_abs_diff"], T(0.5))


def test_tis_needs_rollout_logprobs():
    with pytest.raises(ValueError, match="needs rollout_logprobs"):
        algo.ppo_clip_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                           config=PolicyLossConfig(use_tis=True))


def test_tis_weights_on_policy_are_one():
    w, m = algo.tis_weights(torch.full((2, 2), -0.5), torch.full((2, 2), -0.5), torch.ones(2, 2))
    assert (w == 1).all()
    assert m["tis_clipfrac"].item() == 0 and m["rollout_train_kl"].item() == 0


def test_entropy_metric_and_shape_errors():
    lp = torch.zeros(1, 2)
    _, m = algo.ppo_clip_loss(lp, lp, torch.ones(1, 2), T([[1, 0]]), entropy=T([[0.7, 99.0]]))
    torch.testing.assert_close(m["entropy"], T(0.7))
    with pytest.raises(ValueError, match=r"one shape \[B, T\]"):
        algo.ppo_clip_loss(lp, lp, torch.ones(2), torch.ones(1, 2))


# ----------------------------------------------------------------------------------------- GSPO


def test_gspo_by_hand():
    # row 0: log ratios .1, .3 -> s0 = exp(.2) = 1.2214 > 1.2, A = +1: clipped, loss -1.2
    # row 1: log ratios 0, 0, .3 -> s1 = exp(.1) = 1.1052, A = -1: unclipped, loss 1.1052
    old = torch.zeros(2, 3)
    lp = leaf([[0.1, 0.3, 5.0], [0.0, 0.0, 0.3]])
    mask = T([[1, 1, 0], [1, 1, 1]])
    adv = T([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]])
    cfg = PolicyLossConfig(aggregation="seq_mean_token_mean")
    loss, m = algo.gspo_loss(lp, old, adv, mask, config=cfg)
    s0, s1 = math.exp(0.2), math.exp(0.1)
    torch.testing.assert_close(loss, T((-1.2 + s1) / 2))
    loss.backward()
    # sequence level: L = (1/2)(-A s1) with s1 = exp(mean of 3 log ratios) -> dL/dlogp_t = s1 / 6
    torch.testing.assert_close(lp.grad, T([[0.0, 0.0, 0.0], [s1 / 6, s1 / 6, s1 / 6]]))
    torch.testing.assert_close(m["pg_clipfrac_high"], T(2 / 5))  # both tokens of row 0
    torch.testing.assert_close(m["ratio_max"], T(s0))
    torch.testing.assert_close(m["ratio_min"], T(s1))


def test_gspo_differs_from_token_ppo():
    # token ratios 1.5 and 1/1.5 average to a sequence ratio of exactly 1: GSPO does not clip
    old = torch.zeros(1, 2)
    lp = T([[math.log(1.5), -math.log(1.5)]])
    adv = torch.ones(1, 2)
    _, m_gspo = algo.gspo_loss(lp, old, adv, torch.ones(1, 2))
    _, m_ppo = algo.ppo_clip_loss(lp, old, adv, torch.ones(1, 2))
    assert m_gspo["pg_clipfrac"].item() == 0.0
    assert m_ppo["pg_clipfrac"].item() == 0.5


# ---------------------------------------------------------------------------------------- CISPO


def test_cispo_by_hand_keeps_the_gradient_of_clipped_tokens():
    # ratios .5, 1, 2, .1 with advantages +1, -1, +1, -1; eps_clip_high .28 -> weights .5, 1, 1.28, .1
    lp = leaf([[math.log(0.5), 0.0, math.log(2.0), math.log(0.1)]], F64)
    old = torch.zeros(1, 4, dtype=F64)
    adv = T([[1.0, -1.0, 1.0, -1.0]], dtype=F64)
    cfg = PolicyLossConfig(eps_clip_high=0.28)
    loss, m = algo.cispo_loss(lp, old, adv, torch.ones(1, 4), config=cfg)
    w = T([[0.5, 1.0, 1.28, 0.1]], dtype=F64)
    torch.testing.assert_close(loss, (-adv * w).mean())  # the value is -A w
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv * w / 4)  # the gradient of -sg(w) A log pi
    torch.testing.assert_close(m["pg_clipfrac"], T(0.25, dtype=F64))
    assert m["pg_clipfrac_high"].item() == 0.25 and m["pg_clipfrac_low"].item() == 0.0
    # PPO drops the gradient where it clips: token 2 (A > 0, r > 1.28) and token 3 (A < 0, r < .8)
    lp_ppo = lp.detach().clone().requires_grad_()
    algo.ppo_clip_loss(lp_ppo, old, adv, torch.ones(1, 4), config=cfg)[0].backward()
    assert lp_ppo.grad[0, 2] == 0 and lp_ppo.grad[0, 3] == 0 and lp.grad[0, 2] != 0 and lp.grad[0, 3] != 0
    torch.testing.assert_close(lp_ppo.grad[0, :2], lp.grad[0, :2])  # in the trust region they agree


def test_cispo_weight_has_no_gradient_and_takes_tis():
    lp = leaf([[-1.0, -1.0]], F64)
    old = T([[-1.2, -3.0]], dtype=F64)  # ratios e^.2 = 1.221 (unclipped), e^2 (clipped at 1.28)
    rollout = T([[-1.2, -3.5]], dtype=F64)  # TIS weights 1 and min(e^.5, 1.5) = 1.5
    cfg = PolicyLossConfig(eps_clip_high=0.28, use_tis=True, tis_cap=1.5, aggregation="seq_mean_token_sum_norm",
                           max_length_norm=4)
    loss, m = algo.cispo_loss(lp, old, T([[2.0, 2.0]], dtype=F64), torch.ones(1, 2), config=cfg,
                              rollout_logprobs=rollout)
    loss.backward()
    r0 = math.exp(0.2)
    torch.testing.assert_close(lp.grad, T([[-2 * r0 / 4, -2 * 1.28 * 1.5 / 4]], dtype=F64))
    torch.testing.assert_close(loss, T(-(2 * r0 + 2 * 1.28 * 1.5) / 4, dtype=F64))
    torch.testing.assert_close(m["tis_clipfrac"], T(0.5, dtype=F64))


# ----------------------------------------------------------------------------------- value loss


def test_value_loss_by_hand():
    v = leaf([[1.0, 0.8, -1.0, 7.0]])
    old = torch.zeros(1, 4)
    ret = T([[0.0, 1.0, 0.0, 0.0]])
    mask = T([[1, 1, 1, 0]])
    loss, m = algo.value_loss(v, old, ret, mask, clip=0.5)
    # t0: max(1, (.5)^2) -> .5 * 1 = .5, unclipped term chosen, grad (v - R) = 1
    # t1: unclipped .04, clipped (.5 - 1)^2 = .25 -> .125, clipped chosen, grad 0
    # t2: max(1, .25) -> .5, grad -1; t3 masked
    torch.testing.assert_close(loss, T((0.5 + 0.125 + 0.5) / 3))
    loss.backward()
    torch.testing.assert_close(v.grad, T([[1 / 3, 0.0, -1 / 3, 0.0]]))
    torch.testing.assert_close(m["vf_clipfrac"], T(1 / 3))
    torch.testing.assert_close(m["vpred_mean"], T(0.8 / 3))


def test_value_loss_without_clip():
    v = leaf([[0.8]])
    loss, m = algo.value_loss(v, torch.zeros(1, 1), T([[1.0]]), torch.ones(1, 1), clip=None)
    torch.testing.assert_close(loss, T(0.5 * 0.04))
    assert m["vf_clipfrac"].item() == 0.0
