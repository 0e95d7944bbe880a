import asyncio
import textwrap

import pytest
import torch

from agentrl.data import PromptRow, PromptSampler
from agentrl.rollout import (Rollout, RolloutConfig, default_filters, drop_failed, drop_zero_variance,
                             load_generate_fn, load_reward_fn, overlong_mask, overlong_penalty, run_episode)
from agentrl.testing import FakeEngine
from agentrl.types import Group, Sample
from agentrl.utils.imports import HookLoadError


def _rows(targets):
    return [PromptRow(index=i, prompt="-", label=t, env_id="agentrl/Echo-v0", options={"target": t})
            for i, t in enumerate(targets)]


def _echo_responder(tokenizer, rule):
    """An engine that answers the echo env's target (or not) according to ``rule(prompt_text, seed)``."""

    def respond(input_ids, sampling):
        text = tokenizer.decode(input_ids)
        target = text.split("Say the word '")[1].split("'")[0]
        word = target if rule(target, sampling.seed) else "nothing"
        return tokenizer.encode(word + "<|im_end|>", add_special_tokens=False)

    return respond


def test_groups_share_the_task_and_respect_concurrency(template, tokenizer):
    in_flight = peak = 0
    inner = _echo_responder(tokenizer, lambda target, seed: True)

    class Counting(FakeEngine):
        async def generate(self, input_ids, sampling, *, rid=None):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await super().generate(input_ids, sampling, rid=rid)
            finally:
                in_flight -= 1

    engine = Counting(responder=inner, latency=0.01)
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=3, concurrency=4))
    sampler = PromptSampler(_rows(["apple", "river", "cloud"]), shuffle=False)
    result = asyncio.run(rollout.generate(sampler.next_batch, batch_size=3))
    assert len(result.groups) == 3 and peak <= 4
    for g in result.groups:
        assert len(g.samples) == 3 and len({s.label for s in g.samples}) == 1
        assert [s.sample_index for s in g.samples] == [0, 1, 2]
        assert all(s.reward == 1.0 and s.group_id == g.group_id for s in g.samples)
    assert result.metrics["rollout/reward_mean"] == 1.0
    assert result.metrics["rollout/status_ok"] == 1.0


def test_dynamic_sampling_oversamples_until_batch_is_full(template, tokenizer):
    # "apple" groups: every sample right (zero variance); others: half right
    def rule(target, seed):
        return target == "apple" or seed % 2 == 0

    engine = FakeEngine(responder=_echo_responder(tokenizer, rule))
    config = RolloutConfig(n_samples_per_prompt=2, max_turns=1)
    config.sampling.seed = 0
    rollout = Rollout(engine, template, config, filters=default_filters(dynamic_sampling=True))
    sampler = PromptSampler(_rows(["apple", "river", "apple", "cloud", "apple", "piano"]), shuffle=False)
    result = asyncio.run(rollout.generate(sampler.next_batch, batch_size=2, max_prompts=6))
    assert len(result.groups) == 2
    assert all(set(g.rewards) == {0.0, 1.0} for g in result.groups)
    assert result.dropped["drop_zero_variance"] >= 1
    assert result.prompts_used <= 6
    assert result.metrics["rollout/zero_variance_groups"] > 0


def test_oversampling_cap_returns_what_passed(template, tokenizer):
    engine = FakeEngine(responder=_echo_responder(tokenizer, lambda t, s: True))
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=2, max_turns=1),
                      filters=default_filters(dynamic_sampling=True))
    sampler = PromptSampler(_rows(["apple"] * 4), shuffle=False)
    result = asyncio.run(rollout.generate(sampler.next_batch, batch_size=2, max_prompts=3))
    assert result.groups == [] and result.prompts_used == 3 and result.dropped["drop_zero_variance"] == 3


def _s(reward, status="ok", n=3):
    return Sample(prompt_ids=[1], response_ids=[2] * n, loss_mask=[1] * n, rollout_logprobs=[-0.1] * n,
                  reward=reward, status=status)


def test_filters():
    g = Group(0, [_s(1.0), _s(0.0, "failed"), _s(0.0, "aborted")])
    assert drop_failed(g).rewards == [1.0]
    assert drop_failed(Group(0, [_s(0, "failed")])) is None
    assert drop_zero_variance(Group(0, [_s(1.0), _s(1.0)])) is None
    assert drop_zero_variance(Group(0, [_s(1.0), _s(0.0)])) is not None
    masked = overlong_mask(Group(0, [_s(1.0, "truncated"), _s(1.0)]))
    assert masked.samples[0].loss_mask == [0, 0, 0] and masked.samples[1].loss_mask == [1, 1, 1]
    penalised = overlong_penalty(-0.5)(Group(0, [_s(1.0, "truncated"), _s(1.0)]))
    assert penalised.rewards == [-0.5, 1.0]
    with pytest.raises(ValueError, match="'keep', 'mask', 'penalty'"):
        default_filters(overlong="drop")


def test_custom_generate_function_contract(template, tokenizer, tmp_path):
    hook = tmp_path / "my_hooks.py"
    hook.write_text(textwrap.dedent("""
        from agentrl.rollout import run_episode

        async def generate(engine, template, request, config, *, reward_fn=None):
            sample = await run_episode(engine, template, request, config, reward_fn=reward_fn)
            sample.metadata["custom"] = True
            return sample

        async def broken(engine, template, request, config, *, reward_fn=None):
            return "not a sample"

        def reward(sample):
            return 0.5 if sample.num_turns == 1 else 0.0

        def not_a_generate(x):
            return x
    """))
    generate = load_generate_fn(f"{hook}:generate")
    engine = FakeEngine(responder=_echo_responder(tokenizer, lambda t, s: True))
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=2), generate_fn=generate,
                      reward_fn=load_reward_fn(f"{hook}:reward"))
    result = asyncio.run(rollout.generate(PromptSampler(_rows(["apple"])).next_batch, batch_size=1))
    samples = result.groups[0].samples
    assert all(s.metadata["custom"] and s.reward == 0.5 for s in samples)

    # a broken generate function fails its episodes: retried, then left out (even with no filters asked for)
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=2, max_episode_retries=1),
                      generate_fn=load_generate_fn(f"{hook}:broken"), filters=())
    sample = asyncio.run(rollout._run_episode(rollout.requests_for(_rows(["apple"])[0], 0)[0]))
    assert sample.status == "failed" and "expected a Sample" in sample.error and sample.metrics["retries"] == 1
    result = asyncio.run(rollout.generate(PromptSampler(_rows(["apple"])).next_batch, batch_size=1, max_prompts=1))
    assert result.groups == [] and result.dropped == {"drop_failed": 1}
    assert result.metrics["rollout/failed_excluded"] == 2 and result.metrics["rollout/episode_retries"] == 2

    with pytest.raises(HookLoadError, match="async def"):
        load_generate_fn(f"{hook}:not_a_generate")
    with pytest.raises(HookLoadError, match="has no attribute 'nope'"):
        load_reward_fn(f"{hook}:nope")
    with pytest.raises(HookLoadError, match="does not exist"):
        load_reward_fn("missing_file.py:reward")


def test_row_without_env_is_a_config_error(template):
    rollout = Rollout(FakeEngine(script=[]), template, RolloutConfig())
    with pytest.raises(ValueError, match="names no environment"):
        rollout.requests_for(PromptRow(index=0, prompt="x", source="d.jsonl:1"), 0)


def _flaky_rollout(template, tokenizer, fail_rate, retries, seed=1234):
    """Echo episodes that end in one or two turns (reward 1 or .5) on an environment whose ``step`` fails
    ``fail_rate`` of its episodes at random (like a remote environment server dropping connections)."""
    import random

    from agentrl.testing.echo_env import EchoEnv

    rng = random.Random(seed)

    class Flaky(EchoEnv):
        def __init__(self):
            super().__init__()
            self.fails = rng.random() < fail_rate

        def step(self, action):
            if self.fails:
                raise ConnectionError("environment server dropped the episode")
            return super().step(action)

    async def generate(engine, template, request, config, *, reward_fn=None):
        return await run_episode(engine, template, request, config, env=Flaky(), reward_fn=reward_fn)

    engine = FakeEngine(responder=_echo_responder(tokenizer, lambda target, seed: seed % 2 == 0))
    config = RolloutConfig(n_samples_per_prompt=4, max_episode_retries=retries)
    config.sampling.seed = 0
    return Rollout(engine, template, config, generate_fn=generate, reward_fn=lambda s: 1.0 / s.num_turns)


def _advantages(rollout, n_groups=4):
    from agentrl import algo
    from agentrl.train import RolloutBatch

    rows = _rows(["apple", "river", "cloud", "piano"][:n_groups])
    result = asyncio.run(rollout.generate(PromptSampler(rows, shuffle=False).next_batch, batch_size=n_groups,
                                          max_prompts=n_groups))
    batch = RolloutBatch.from_samples(result.samples)
    adv = algo.grpo(batch.rewards, batch.group_ids, batch.loss_mask)  # [N, T]: one value on each episode's tokens
    per_episode = [adv[i][batch.loss_mask[i] > 0] for i in range(len(batch))]
    assert all(len(a) and (a == a[0]).all() for a in per_episode)
    return {(s.group_id, s.sample_index): (s, a[0]) for s, a in zip(batch.samples, per_episode)}, result


def test_a_flaky_environment_no_longer_changes_the_advantages_of_the_episodes_that_succeeded(template, tokenizer):
    reliable, _ = _advantages(_flaky_rollout(template, tokenizer, fail_rate=0.0, retries=0))
    flaky, result = _advantages(_flaky_rollout(template, tokenizer, fail_rate=0.2, retries=3))
    assert result.metrics["rollout/episode_retries"] >= 2  # failures happened and were run again
    assert result.metrics["rollout/failed_excluded"] == 0
    assert {s.reward for s, _ in reliable.values()} == {0.5, 1.0}  # groups have spread: advantages are not all 0
    assert flaky.keys() == reliable.keys()
    for key, (sample, adv) in reliable.items():
        assert flaky[key][0].response_ids == sample.response_ids  # the same seeds replay the same episode
        assert torch.equal(flaky[key][1], adv), key


def test_what_still_fails_is_left_out_of_its_group_not_scored_zero(template, tokenizer):
    from agentrl import algo

    reliable, _ = _advantages(_flaky_rollout(template, tokenizer, fail_rate=0.0, retries=0))
    flaky, result = _advantages(_flaky_rollout(template, tokenizer, fail_rate=0.2, retries=0))
    failed = reliable.keys() - flaky.keys()
    assert result.metrics["rollout/failed_excluded"] == len(failed) > 0
    assert result.metrics["rollout/status_failed"] == len(failed) / len(reliable)
    # the survivors' advantages: GRPO over the episodes that finished, as if the failed ones were never run
    survivors = sorted(flaky)
    rewards = torch.tensor([reliable[k][0].reward for k in survivors])
    groups = torch.tensor([k[0] for k in survivors])
    expected = algo.grpo(rewards, groups, torch.ones(len(survivors), 1))[:, 0]
    torch.testing.assert_close(torch.stack([flaky[k][1] for k in survivors]), expected)
    # scoring the failures as 0 instead would have moved them
    zero_scored = algo.grpo(torch.tensor([reliable[k][0].reward if k in flaky else 0.0 for k in sorted(reliable)]),
                            torch.tensor([k[0] for k in sorted(reliable)]), torch.ones(len(reliable), 1))[:, 0]
    kept = torch.tensor([k in flaky for k in sorted(reliable)])
    assert not torch.allclose(zero_scored[kept], expected)
