import asyncio


from agentrl.engine.base import Completion, EngineError, SamplingParams
from agentrl.rollout import EpisodeRequest, RolloutConfig, run_episode
from agentrl.testing import FakeEngine
from agentrl.testing.echo_env import EchoEnv


def _request(**kw):
    return EpisodeRequest(env_id="agentrl/Echo-v0", options={"target": "apple"}, env_seed=0, **kw)


def test_two_turn_episode_has_exact_tokens_mask_and_logprobs(template, say):
    first, second = say("pear"), say("apple")
    engine = FakeEngine(script=[first, second])
    sample = asyncio.run(run_episode(engine, template, _request(group_id=2, sample_index=1), RolloutConfig()))
    assert sample.status == "ok" and sample.reward == 1.0 and sample.num_turns == 2
    opening = [{"role": "user", "content": "Say the word 'apple'."}]
    assert sample.prompt_ids == template.encode(opening, add_generation_prompt=True)
    feedback = [{"role": "user", "content": "You said: 'pear'. Say the word 'apple'."}]
    obs_ids = template.encode_continuation(feedback, None, True)
    assert sample.response_ids == first + obs_ids + second
    assert sample.loss_mask == [1] * len(first) + [0] * len(obs_ids) + [1] * len(second)
    def lp(n):  # the FakeEngine's logprobs
        return [round(-0.1 * (i + 1), 6) for i in range(n)]

    assert sample.rollout_logprobs == lp(len(first)) + [0.0] * len(obs_ids) + lp(len(second))
    # the engine saw exactly the episode's tokens, turn by turn
    assert engine.requests[0][0] == sample.prompt_ids
    assert engine.requests[1][0] == sample.prompt_ids + first + obs_ids
    assert [m["role"] for m in sample.messages] == ["user", "assistant", "user", "assistant"]
    assert sample.messages[1]["content"] == "pear"
    assert (sample.group_id, sample.sample_index, sample.env_id) == (2, 1, "agentrl/Echo-v0")
    assert sample.metrics["turns"] == 2 and sample.metrics["generated_tokens"] == len(first) + len(second)
    # the engine is asked to stop at the end-of-turn token
    assert template.end_of_turn_ids[-1] in engine.requests[0][1].stop_token_ids


def test_turns_record_their_starts_rewards_and_state_keys(template, say):
    from envs.gym_text import GymTextEnv

    # FrozenLake's default map: right, right, then an invalid reply, then down, down, down, right to the goal
    moves = ["right", "right", "nowhere", "down", "down", "down", "right"]
    engine = FakeEngine(script=[say(f"<action>{m}</action>") for m in moves])
    request = EpisodeRequest(env_id="agentrl/FrozenLake-v0", env_seed=0)
    sample = asyncio.run(run_episode(engine, template, request, RolloutConfig(), env=GymTextEnv("FrozenLake-v1")))
    assert sample.status == "ok" and sample.reward == 1.0 and sample.num_turns == 7
    assert sample.turn_rewards == [0.0] * 6 + [1.0]
    # the state each turn acted in: positions 0, 1, 2, 2 (the invalid reply left it), 6, 10, 14
    assert sample.state_keys == ["0", "1", "2", "2", "6", "10", "14"]
    # each turn starts at its own generated tokens, right after the previous observation
    for k, start in enumerate(sample.turn_starts):
        reply = say(f"<action>{moves[k]}</action>")
        assert sample.response_ids[start:start + len(reply)] == reply
        assert sample.loss_mask[start:start + len(reply)] == [1] * len(reply)
        assert start == 0 or sample.loss_mask[start - 1] == 0


def test_a_reward_fn_scores_the_last_turn_and_a_failure_scores_nothing(template, say):
    engine = FakeEngine(script=[say("pear"), say("apple")])
    sample = asyncio.run(run_episode(engine, template, _request(), RolloutConfig(), reward_fn=lambda s: 0.5))
    assert sample.turn_rewards == [0.0, 0.5] and sample.state_keys == [None, None]

    class Exploding(EchoEnv):
        def step(self, action):
            if "apple" in action:
                raise RuntimeError("crashed")
            return super().step(action)

    sample = asyncio.run(run_episode(FakeEngine(script=[say("pear"), say("apple")]), template, _request(),
                                     RolloutConfig(), env=Exploding()))
    assert sample.status == "failed" and sample.num_turns == 2 and sample.turn_rewards == [0.0, 0.0]


def test_turn_budget_truncates(template, say):
    engine = FakeEngine(script=[say("no")] * 3)
    sample = asyncio.run(run_episode(engine, template, _request(), RolloutConfig(max_turns=2)))
    assert sample.status == "truncated" and sample.num_turns == 2 and sample.reward == 0.0


def test_context_budget_truncates_and_caps_generation(template, say):
    engine = FakeEngine(script=[say("word " * 50, end=False)])
    prompt_len = len(template.encode([{"role": "user", "content": "Say the word 'apple'."}], add_generation_prompt=True))
    config = RolloutConfig(max_context_tokens=prompt_len + 10)
    sample = asyncio.run(run_episode(engine, template, _request(), config))
    assert engine.requests[0][1].max_new_tokens == 10
    assert sample.status == "truncated" and len(sample.response_ids) == 10


class Boom(Exception):
    pass


def test_engine_failure_is_recorded_not_raised(template):
    engine = FakeEngine(script=[], fail_with=EngineError("server at http://x is dead"))
    sample = asyncio.run(run_episode(engine, template, _request(), RolloutConfig()))
    assert sample.status == "failed" and "server at http://x is dead" in sample.error
    assert sample.prompt_ids  # what was done before the failure is kept


def test_env_failure_and_timeout_and_abort(template, say):
    class Exploding(EchoEnv):
        def step(self, action):
            raise Boom("tool crashed")

    sample = asyncio.run(run_episode(FakeEngine(script=[say("x")]), template, _request(), RolloutConfig(),
                                     env=Exploding()))
    assert sample.status == "failed" and "Boom: tool crashed" in sample.error
    assert sample.loss_mask == [1] * len(say("x"))  # the completion before the crash is kept

    slow = FakeEngine(script=[say("x")], latency=5)
    sample = asyncio.run(run_episode(slow, template, _request(), RolloutConfig(episode_timeout=0.05)))
    assert sample.status == "failed" and "timed out" in sample.error

    aborted = FakeEngine(script=[Completion([], [], "abort")])
    sample = asyncio.run(run_episode(aborted, template, _request(), RolloutConfig()))
    assert sample.status == "aborted"


def test_unknown_env_is_a_failed_episode(template):
    sample = asyncio.run(run_episode(FakeEngine(script=[]), template,
                                     EpisodeRequest(env_id="agentrl/Nope-v0"), RolloutConfig()))
    assert sample.status == "failed" and "not registered" in sample.error


def test_reward_fn_replaces_env_reward(template, say):
    def rm(sample):
        return {"reward": 0.25, "length": float(len(sample.response_ids))}

    sample = asyncio.run(run_episode(FakeEngine(script=[say("apple")]), template, _request(), RolloutConfig(),
                                     reward_fn=rm))
    assert sample.reward == 0.25 and sample.rewards["length"] == len(say("apple"))

    async def bad_rm(sample):
        return float("nan")

    sample = asyncio.run(run_episode(FakeEngine(script=[say("apple")]), template, _request(), RolloutConfig(),
                                     reward_fn=bad_rm))
    assert sample.status == "failed" and "reward function failed" in sample.error


def test_sampling_seed_is_passed_per_turn(template, say):
    engine = FakeEngine(script=[say("no"), say("apple")])
    config = RolloutConfig(sampling=SamplingParams(temperature=0.7, seed=5))
    asyncio.run(run_episode(engine, template, _request(sampling_seed=11), config))
    seeds = [s.seed for _, s in engine.requests]
    assert seeds[0] == 11 and seeds[1] != seeds[0]
    assert all(s.temperature == 0.7 for _, s in engine.requests)


def test_an_answer_cut_by_the_token_budget_is_truncated_but_scored(template, say):
    engine = FakeEngine(script=[say("apple " * 20, end=False)])
    sample = asyncio.run(run_episode(engine, template, _request(), RolloutConfig(max_new_tokens_per_turn=3)))
    assert len(sample.response_ids) == 3 and sample.reward == 1.0  # the env graded the cut answer
    assert sample.status == "truncated"  # but the budget ended the turn (overlong filters see it)
