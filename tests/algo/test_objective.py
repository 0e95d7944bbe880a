"""The RL objective both trainers train on: hand-derived values and gradients, micro-batch parts,
padding and order invariance, metric keys, configuration errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from agentrl import algo
from agentrl.algo import ObjectiveConfig, PolicyLossConfig
from agentrl.train import TrainConfig

F64 = torch.float64
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
POLICY_KEYS = {"pg_loss", "pg_clipfrac", "pg_clipfrac_low", "pg_clipfrac_high", "pg_clipfrac_dual", "ppo_kl",
               "ratio_mean", "ratio_max", "ratio_min"}


def _hand_case():
    """Three loss tokens: (0,0) ratio 1, A 1; (0,1) ratio 2, A 1 (clipped at 1.2); (1,0) ratio 1, A -2."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    lp = torch.tensor([[-1.0, -2.0, 7.0], [-0.5, 9.0, 9.0]], dtype=F64, requires_grad=True)  # 7, 9: padding
    old = torch.tensor([[-1.0, -2.0 - math.log(2.0), 0.0], [-0.5, 0.0, 0.0]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.0, 0.0]], dtype=F64)
    ref = lp.detach() - torch.tensor([[0.5, 1.0, 3.0], [0.0, 3.0, 3.0]], dtype=F64)  # k1 = lp - ref
    entropy = torch.tensor([[2.0, 1.0, 50.0], [3.0, 50.0, 50.0]], dtype=F64, requires_grad=True)
    return lp, old, adv, mask, ref, entropy


def test_hand_derived_loss_metrics_and_gradients():
    lp, old, adv, mask, ref, entropy = _hand_case()
    cfg = ObjectiveConfig(use_kl_loss=True, kl_loss_coef=0.2, kl_loss_type="k1", entropy_coef=0.1)
    loss, m = algo.rl_objective(lp, adv, mask, config=cfg, old_logprobs=old, ref_logprobs=ref, entropy=entropy,
                                rollout_logprobs=old)
    pg = (-1.0 - 1.2 + 2.0) / 3            # -A r per token, the ratio-2 token clipped to 1.2
    kl = (0.5 + 1.0 + 0.0) / 3             # k1 = logp - logp_ref
    ent = (2.0 + 1.0 + 3.0) / 3
    assert loss.item() == pytest.approx(pg + 0.2 * kl - 0.1 * ent)
    expected = {"loss": pg + 0.2 * kl - 0.1 * ent, "pg_loss": pg, "kl_loss": kl, "entropy": ent,
                "pg_clipfrac": 1 / 3, "pg_clipfrac_high": 1 / 3, "pg_clipfrac_low": 0.0, "pg_clipfrac_dual": 0.0,
                "ppo_kl": -math.log(2.0) / 3, "ratio_mean": 4 / 3, "ratio_max": 2.0, "ratio_min": 1.0,
                "rollout_train_abs_diff": 0.0, "rollout_train_kl": 0.0}
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key].item() == pytest.approx(value, abs=1e-12), key
        assert not m[key].requires_grad, key
    loss.backward()
    # d/dlogp: pg -A r / 3 (0 where clipped), KL +0.2 / 3 on every loss token; nothing on padding
    torch.testing.assert_close(lp.grad, torch.tensor([[(-1 + 0.2) / 3, 0.2 / 3, 0.0], [(2 + 0.2) / 3, 0.0, 0.0]],
                                                     dtype=F64))
    torch.testing.assert_close(entropy.grad, -0.1 / 3 * mask.to(F64))


def test_without_old_logprobs_the_ratio_is_one():
    lp, _, adv, mask, _, entropy = _hand_case()
    loss, m = algo.rl_objective(lp, adv, mask, entropy=entropy.detach())
    assert loss.item() == pytest.approx((-1.0 - 1.0 + 2.0) / 3)
    assert m["ratio_max"].item() == 1.0 and m["pg_clipfrac"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1 / 3, -1 / 3, 0.0], [2 / 3, 0.0, 0.0]], dtype=F64))


def test_a_call_without_loss_tokens_takes_no_part_in_the_extremes():
    lp, old, adv, mask, _, _ = _hand_case()
    empty = torch.zeros_like(mask)
    loss, m = algo.rl_objective(lp, adv, empty, old_logprobs=old, denominator=3, num_tokens=3)
    assert loss.item() == 0 and m["pg_loss"].item() == 0 and m["ratio_mean"].item() == 0
    assert m["ratio_max"].item() == -math.inf and m["ratio_min"].item() == math.inf
    _, full = algo.rl_objective(lp, adv, mask, old_logprobs=old, denominator=3, num_tokens=3)
    merged = algo.merge_metric_parts([{k: float(v) for k, v in p.items()} for p in (m, full)])
    assert merged["ratio_max"] == 2.0 and merged["ratio_min"] == 1.0
    _, alone = algo.rl_objective(lp, adv, empty, old_logprobs=old)  # no loss token in the whole step
    assert alone["ratio_max"].item() == 1.0 and alone["ratio_min"].item() == 1.0


@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("tis", [False, True])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_metric_keys(kl, tis, with_entropy):
    lp, old, adv, mask, ref, entropy = _hand_case()
    cfg = ObjectiveConfig(policy=PolicyLossConfig(use_tis=tis), use_kl_loss=kl, kl_loss_coef=0.1)
    _, m = algo.rl_objective(lp, adv, mask, config=cfg, old_logprobs=old, rollout_logprobs=old - 0.1,
                             ref_logprobs=ref, entropy=entropy if with_entropy else None)
    expected = POLICY_KEYS | {"loss", "rollout_train_abs_diff", "rollout_train_kl"}
    expected |= {"kl_loss"} if kl else set()
    expected |= {"tis_weight_mean", "tis_clipfrac"} if tis else set()
    expected |= {"entropy"} if with_entropy else set()
    assert set(m) == expected
    assert all(v.dim() == 0 for v in m.values())


def _random_inputs(gen, b, t):
    lp = -3 * torch.rand(b, t, generator=gen, dtype=F64)
    old = lp + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    rollout = old + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    ref = lp + 0.5 * torch.randn(b, t, generator=gen, dtype=F64)
    entropy = 3 * torch.rand(b, t, generator=gen, dtype=F64)
    adv = torch.randn(b, 1, generator=gen, dtype=F64) + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    mask = (torch.rand(b, t, generator=gen) > 0.3).long()
    return lp, old, rollout, ref, entropy, adv, mask


def _config(mode, loss_name="ppo", tis=False, dual=False):
    policy = PolicyLossConfig(aggregation=mode, max_length_norm=8, eps_clip=0.1, eps_clip_high=0.2,
                              eps_clip_c=3.0 if dual else None, use_tis=tis)
    return ObjectiveConfig(policy_loss=loss_name, policy=policy, use_kl_loss=True, kl_loss_coef=0.3,
                           kl_loss_type="low_var_kl", entropy_coef=0.05)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 6), t=st.integers(1, 6), mode=st.sampled_from(MODES),
       loss_name=st.sampled_from(["ppo", "gspo", "cispo"]), tis=st.booleans(), data=st.data())
def test_micro_batch_parts_add_up_to_the_full_batch(seed, b, t, mode, loss_name, tis, data):
    """What both trainers rely on: micro-batches (each cut to its own width, right-aligned as
    ``RolloutBatch.select`` cuts them) with the global denominator and token count give the
    full-batch loss, gradient and metrics once summed (``merge_metric_parts``)."""
    gen = torch.Generator().manual_seed(seed)
    lp, old, rollout, ref, entropy, adv, mask = _random_inputs(gen, b, t)
    cfg = _config(mode, loss_name, tis)
    full_lp, full_h = lp.clone().requires_grad_(), entropy.clone().requires_grad_()
    full, full_m = algo.rl_objective(full_lp, adv, mask, config=cfg, old_logprobs=old, rollout_logprobs=rollout,
                                     ref_logprobs=ref, entropy=full_h)
    full.backward()

    order = data.draw(st.permutations(range(b)))
    cuts = sorted(data.draw(st.sets(st.integers(1, b - 1), max_size=b - 1))) if b > 1 else []
    groups = [order[i:j] for i, j in zip([0, *cuts], [*cuts, b])]
    denom = algo.aggregation_denominator(mask, mode)
    n_tokens = float(mask.sum())
    mb_lp, mb_h = lp.clone().requires_grad_(), entropy.clone().requires_grad_()
    total, parts = 0.0, []
    for rows in groups:
        idx = torch.tensor(rows)
        width = data.draw(st.integers(1, t))  # trimmed from the left (columns with mask 0 or not)
        cols = slice(t - width, t)
        if mask[idx, : t - width].any():
            cols = slice(0, t)  # cutting loss tokens away would change the problem: keep them
        cut = lambda x, idx=idx, cols=cols: x[idx][:, cols]  # noqa: E731
        loss, m = algo.rl_objective(cut(mb_lp), cut(adv), cut(mask), config=cfg, old_logprobs=cut(old),
                                    rollout_logprobs=cut(rollout), ref_logprobs=cut(ref), entropy=cut(mb_h),
                                    denominator=denom, num_tokens=n_tokens)
        loss.backward()
        total += loss.item()
        parts.append({k: float(v) for k, v in m.items()})
    merged = algo.merge_metric_parts(parts)
    assert total == pytest.approx(full.item(), rel=1e-9, abs=1e-12)
    assert merged.keys() == full_m.keys()
    for key, value in full_m.items():
        assert merged[key] == pytest.approx(value.item(), rel=1e-9, abs=1e-12), key
    torch.testing.assert_close(mb_lp.grad, full_lp.grad)
    torch.testing.assert_close(mb_h.grad, full_h.grad)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 6), pad_rows=st.integers(0, 2),
       pad_cols=st.integers(0, 3), mode=st.sampled_from(MODES), loss_name=st.sampled_from(["ppo", "gspo", "cispo"]),
       tis=st.booleans(), dual=st.booleans(), data=st.data())
def test_invariant_to_padding_and_episode_order(seed, b, t, pad_rows, pad_cols, mode, loss_name, tis, dual, data):
    gen = torch.Generator().manual_seed(seed)
    lp, old, rollout, ref, entropy, adv, mask = _random_inputs(gen, b, t)
    cfg = _config(mode, loss_name, tis, dual)
    rows, cols = b + pad_rows, t + pad_cols
    row_index = torch.tensor(data.draw(st.permutations(range(rows))))[:b]
    offset = data.draw(st.integers(0, pad_cols))

    def embed(x, fill):
        out = fill.clone()
        out[row_index, offset: offset + t] = x
        return out

    garbage = lambda: 40 * torch.randn(rows, cols, generator=gen, dtype=F64)  # noqa: E731
    small = [lp.clone().requires_grad_(), entropy.clone().requires_grad_()]
    big = [embed(lp, garbage()).requires_grad_(), embed(entropy, garbage()).requires_grad_()]
    mask_big = embed(mask, torch.zeros(rows, cols, dtype=torch.long))
    old_big, rollout_big, ref_big, adv_big = (embed(x, garbage()) for x in (old, rollout, ref, adv))
    loss_s, m_s = algo.rl_objective(small[0], adv, mask, config=cfg, old_logprobs=old, rollout_logprobs=rollout,
                                    ref_logprobs=ref, entropy=small[1])
    loss_b, m_b = algo.rl_objective(big[0], adv_big, mask_big, config=cfg, old_logprobs=old_big,
                                    rollout_logprobs=rollout_big, ref_logprobs=ref_big, entropy=big[1])
    torch.testing.assert_close(loss_b, loss_s)
    assert m_b.keys() == m_s.keys()
    for key in m_s:
        torch.testing.assert_close(m_b[key], m_s[key], msg=key)
    loss_s.backward()
    loss_b.backward()
    outside = torch.ones(rows, cols, dtype=torch.bool)
    outside[row_index, offset: offset + t] = False
    for x_s, x_b in zip(small, big):
        torch.testing.assert_close(x_b.grad[row_index, offset: offset + t], x_s.grad)
        assert (x_b.grad[outside] == 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss_name", ["ppo", "cispo"])
def test_gradcheck(mode, loss_name):
    gen = torch.Generator().manual_seed(3)
    # ratios near 1 with eps_clip 0.5: no finite difference crosses a clip bound
    old = -torch.rand(2, 4, generator=gen, dtype=F64) - 0.5
    lp = (old + 0.1 * torch.randn(2, 4, generator=gen, dtype=F64)).requires_grad_()
    entropy = torch.rand(2, 4, generator=gen, dtype=F64, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 0.5, -2.0], [-1.5, 2.0, -1.0, 1.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    ref = old - 0.2
    cfg = ObjectiveConfig(policy_loss=loss_name, policy=PolicyLossConfig(aggregation=mode, max_length_norm=6, eps_clip=0.5),
                          use_kl_loss=True, kl_loss_coef=0.3, kl_loss_type="k3", entropy_coef=0.1)
    fn = lambda x, h: algo.rl_objective(x, adv, mask, config=cfg, old_logprobs=old, ref_logprobs=ref,  # noqa: E731
                                        entropy=h, denominator=5)[0]
    assert gradcheck(fn, (lp, entropy), eps=1e-6, atol=1e-6)


def test_value_objective_is_the_value_loss_with_the_configs_clip_and_aggregation():
    values = torch.tensor([[1.0, 0.0, 5.0], [2.0, 0.0, 0.0]], requires_grad=True)
    old, returns = torch.zeros(2, 3), torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    cfg = ObjectiveConfig(value_clip=0.5, policy=PolicyLossConfig(aggregation="seq_mean_token_sum_norm",
                                                                  max_length_norm=4))
    loss, m = algo.value_objective(values, old, returns, mask, config=cfg)
    # per token 0.5 * max((V - R)^2, (V_clip - R)^2) = 0.5 V^2 here; sums per episode / L, mean over episodes
    assert loss.item() == pytest.approx(((0.5 * 1 + 0) / 4 + (0.5 * 4) / 4) / 2)
    assert m == {"value_loss": loss.detach()}
    half, _ = algo.value_objective(values, old, returns, mask, config=cfg, denominator=4)
    assert half.item() == pytest.approx(loss.item() / 2)


def test_from_train_config_carries_every_loss_setting():
    train = TrainConfig(policy_loss="gspo", eps_clip=0.1, eps_clip_high=0.3, eps_clip_c=4.0,
                        loss_aggregation="seq_mean_token_sum_norm", max_length_norm=512.0, use_tis=True, tis_cap=3.0,
                        use_kl_loss=True, kl_loss_coef=0.02, kl_loss_type="k2", entropy_coef=0.001, value_clip=0.3)
    cfg = ObjectiveConfig.from_train_config(train)
    assert cfg == ObjectiveConfig(
        policy_loss="gspo", use_kl_loss=True, kl_loss_coef=0.02, kl_loss_type="k2", entropy_coef=0.001,
        value_clip=0.3, policy=PolicyLossConfig(eps_clip=0.1, eps_clip_high=0.3, eps_clip_c=4.0,
                                                aggregation="seq_mean_token_sum_norm", max_length_norm=512.0,
                                                use_tis=True, tis_cap=3.0))


def test_configuration_and_input_errors_are_clear():
    with pytest.raises(ValueError, match="Did you mean 'k3'"):
        ObjectiveConfig(kl_loss_type="k4")
    with pytest.raises(ValueError, match="unknown policy loss 'ppo2'"):
        ObjectiveConfig(policy_loss="ppo2")
    with pytest.raises(ValueError, match="value_clip"):
        ObjectiveConfig(value_clip=0.0)
    with pytest.raises(ValueError, match="aggregation mode"):
        ObjectiveConfig.from_train_config(TrainConfig(loss_aggregation="token_sum"))
    lp, old, adv, mask, _, _ = _hand_case()
    with pytest.raises(ValueError, match="ref_logprobs"):
        algo.rl_objective(lp, adv, mask, config=ObjectiveConfig(use_kl_loss=True), old_logprobs=old)
    with pytest.raises(ValueError, match="entropy"):
        algo.rl_objective(lp, adv, mask, config=ObjectiveConfig(entropy_coef=0.01), old_logprobs=old)


def test_merging_parts_and_optimiser_steps():
    parts = [{"loss": 0.5, "ratio_max": 1.5, "ratio_min": 0.9}, {"loss": 0.25, "ratio_max": 1.2, "ratio_min": 0.7}]
    assert algo.merge_metric_parts(parts) == {"loss": 0.75, "ratio_max": 1.5, "ratio_min": 0.7}
    assert algo.merge_metric_parts([]) == {}
    # ranks without a part (only padding passes) and keys that only some parts have
    merged = algo.merge_metric_parts([parts[0], {"loss": -0.25, "ratio_min": 0.7, "value_loss": 2.0}, {}])
    assert merged == {"loss": 0.25, "ratio_max": 1.5, "ratio_min": 0.7, "value_loss": 2.0}
    assert algo.mean_over_steps(parts) == {"loss": 0.375, "ratio_max": 1.5, "ratio_min": 0.7}
