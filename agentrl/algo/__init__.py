"""The RL math: advantages, policy and value losses, KL, entropy, importance correction, aggregation.

Pure tensor functions with no I/O and no distributed code. The torch and the Megatron trainer
both train on :func:`rl_objective` (``objective.py``), which adds up the terms below. A training
step, in short::

    import torch
    from agentrl import algo

    adv = algo.get_advantage_estimator("grpo")(rewards, group_ids, loss_mask,
                                               config=algo.AdvantageConfig())      # [N, T]
    cfg = algo.PolicyLossConfig(eps_clip=0.2, eps_clip_high=0.28)
    loss, metrics = algo.get_policy_loss("ppo")(logprobs, old_logprobs, adv, loss_mask, config=cfg)
    kl = algo.kl_penalty(logprobs, ref_logprobs, "low_var_kl")                      # [N, T]
    loss = loss + 0.001 * algo.aggregate(kl, loss_mask, cfg.aggregation)
    # the same, in one call (what the trainers do, per micro-batch):
    objective = algo.ObjectiveConfig(policy=cfg, use_kl_loss=True, kl_loss_coef=0.001)
    loss, metrics = algo.rl_objective(logprobs, adv, loss_mask, config=objective,
                                      old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)

Runnable::

    >>> import torch
    >>> from agentrl.algo import get_advantage_estimator, get_policy_loss
    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> adv = get_advantage_estimator("grpo")(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask)
    >>> lp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    >>> loss, metrics = get_policy_loss("ppo")(lp, lp.detach(), adv, mask)
    >>> round(loss.item(), 4), metrics["ratio_mean"].item()
    (-0.2357, 1.0)
"""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.algo.advantages import (AdvantageConfig, dr_grpo, gae, grpo, reinforce_plus_plus,
                                         reinforce_plus_plus_baseline, rloo)
    from agentrl.algo.aggregate import (AGGREGATIONS, aggregate, aggregation_denominator, check_aggregation,
                                        masked_mean)
    from agentrl.algo.entropy import (entropy_from_logits, logprobs_and_entropy, logprobs_from_logits)
    from agentrl.algo.kl import (KL_ESTIMATORS, kl_penalty)
    from agentrl.algo.gigpo import gigpo
    from agentrl.algo.losses import (PolicyLossConfig, PolicyLossFn, cispo_loss, gspo_loss, ppo_clip_loss,
                                     value_loss)
    from agentrl.algo.objective import (ObjectiveConfig, mean_over_steps, merge_metric_parts, rl_objective,
                                        value_objective)
    from agentrl.algo.returns import (compute_gae, discounted_returns, masked_whiten, place_rewards_at_turn_ends)
    from agentrl.algo.registry import (ADVANTAGE_ESTIMATORS, CRITIC_ESTIMATORS, POLICY_LOSSES,
                                       TURN_BASELINE_ESTIMATORS, TURN_ESTIMATORS, get_advantage_estimator,
                                       get_policy_loss)
    from agentrl.algo.tis import (rollout_mismatch_metrics, tis_weights)
    from agentrl.algo.turns import (Turns, turn_returns, turn_token_rewards)

MODULES = {
    ".advantages": ["AdvantageConfig", "dr_grpo", "gae", "grpo", "reinforce_plus_plus",
                    "reinforce_plus_plus_baseline", "rloo"],
    ".aggregate": ["AGGREGATIONS", "aggregate", "aggregation_denominator", "check_aggregation", "masked_mean"],
    ".entropy": ["entropy_from_logits", "logprobs_and_entropy", "logprobs_from_logits"],
    ".kl": ["KL_ESTIMATORS", "kl_penalty"],
    ".gigpo": ["gigpo"],
    ".losses": ["PolicyLossConfig", "PolicyLossFn", "cispo_loss", "gspo_loss", "ppo_clip_loss", "value_loss"],
    ".objective": ["ObjectiveConfig", "mean_over_steps", "merge_metric_parts", "rl_objective", "value_objective"],
    ".returns": ["compute_gae", "discounted_returns", "masked_whiten", "place_rewards_at_turn_ends"],
    ".registry": ["ADVANTAGE_ESTIMATORS", "CRITIC_ESTIMATORS", "POLICY_LOSSES", "TURN_BASELINE_ESTIMATORS",
                  "TURN_ESTIMATORS", "get_advantage_estimator", "get_policy_loss"],
    ".tis": ["rollout_mismatch_metrics", "tis_weights"],
    ".turns": ["Turns", "turn_returns", "turn_token_rewards"],
}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
