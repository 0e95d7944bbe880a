import inspect

import pytest

from agentrl import algo


def test_registries_hold_every_named_algorithm():
    assert set(algo.ADVANTAGE_ESTIMATORS) == {
        "grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "gae", "gigpo",
    }
    assert set(algo.POLICY_LOSSES) == {"ppo", "gspo", "cispo"}
    assert algo.CRITIC_ESTIMATORS <= set(algo.ADVANTAGE_ESTIMATORS)
    assert algo.TURN_ESTIMATORS | algo.TURN_BASELINE_ESTIMATORS <= set(algo.ADVANTAGE_ESTIMATORS)
    assert algo.get_advantage_estimator("gigpo") is algo.gigpo and algo.get_policy_loss("cispo") is algo.cispo_loss
    assert algo.get_advantage_estimator("rloo") is algo.rloo
    assert algo.get_policy_loss("gspo") is algo.gspo_loss


def test_uniform_signatures():
    for fn in algo.ADVANTAGE_ESTIMATORS.values():
        params = inspect.signature(fn).parameters
        assert list(params)[:3] == ["rewards", "group_ids", "loss_mask"]
        assert {"config", "values", "token_rewards", "turns"} <= set(params)
    for fn in algo.POLICY_LOSSES.values():
        params = inspect.signature(fn).parameters
        assert list(params)[:4] == ["logprobs", "old_logprobs", "advantages", "loss_mask"]
        assert {"config", "rollout_logprobs", "entropy", "denominator"} <= set(params)


@pytest.mark.parametrize(
    "getter, bad, suggestion",
    [
        (algo.get_advantage_estimator, "gpro", "grpo"),
        (algo.get_advantage_estimator, "reinforce++", "reinforce_plus_plus"),
        (algo.get_policy_loss, "gpso", "gspo"),
    ],
)
def test_unknown_name_lists_valid_names_and_closest(getter, bad, suggestion):
    with pytest.raises(ValueError) as info:
        getter(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert f"Did you mean {suggestion!r}" in message
    assert "rloo" in message or "ppo" in message  # the valid names are listed


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(ValueError, match="expected one of: cispo, gspo, ppo.$"):
        algo.get_policy_loss("zzzzzz")


def test_unknown_aggregation_and_kl_kind():
    with pytest.raises(ValueError, match="Did you mean 'token_mean'"):
        algo.PolicyLossConfig(aggregation="token_means")
    import torch

    with pytest.raises(ValueError, match="Did you mean 'k3'"):
        algo.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_config_validation():
    with pytest.raises(ValueError, match="eps_clip_c"):
        algo.PolicyLossConfig(eps_clip_c=0.9)
    with pytest.raises(ValueError, match="eps_clip must be"):
        algo.PolicyLossConfig(eps_clip=0.0)
    with pytest.raises(ValueError, match="tis_cap"):
        algo.PolicyLossConfig(tis_cap=0)
    with pytest.raises(ValueError, match="gamma"):
        algo.AdvantageConfig(gamma=1.5)
    assert algo.PolicyLossConfig(eps_clip=0.2).clip_high == 0.2
    assert algo.PolicyLossConfig(eps_clip=0.2, eps_clip_high=0.28).clip_high == 0.28
