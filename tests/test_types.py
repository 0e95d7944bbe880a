import math

import pytest

from agentrl.types import Group, InvalidSampleError, Sample


def _sample(**kw):
    base = dict(prompt_ids=[1, 2], response_ids=[3, 4, 5], loss_mask=[1, 0, 1],
                rollout_logprobs=[-0.5, 0.0, -1.25], reward=1.0, status="ok")
    base.update(kw)
    return Sample(**base)


def test_valid_sample_round_trips_through_json():
    s = _sample(messages=[{"role": "user", "content": "héllo"}], metadata={"k": [1, 2]}, rewards={"f1": 0.5})
    s.validate()
    back = Sample.from_json(s.to_json())
    assert back == s
    assert back.tokens == [1, 2, 3, 4, 5]
    assert back.num_generated_tokens == 2


@pytest.mark.parametrize(
    "changes, needle",
    [
        (dict(loss_mask=[1, 0]), "equal lengths"),
        (dict(rollout_logprobs=[-0.1]), "equal lengths"),
        (dict(status="done"), "status must be one of"),
        (dict(reward=math.nan), "reward must be finite"),
        (dict(reward=math.inf), "reward must be finite"),
        (dict(rewards={"x": math.nan}), "rewards['x']"),
        (dict(loss_mask=[1, 2, 1]), "only 0 and 1"),
        (dict(rollout_logprobs=[-0.1, 0.0, math.nan]), "rollout_logprobs[2]"),
        (dict(rollout_logprobs=[0.5, 0.0, -0.1]), "<= 0"),
        (dict(response_ids=[3, -1, 5]), "non-negative ints"),
        (dict(num_turns=2, turn_starts=[0]), "turn_starts must be empty or hold one entry per turn (2)"),
        (dict(num_turns=2, turn_rewards=[1.0]), "turn_rewards must be empty or hold one entry per turn"),
        (dict(num_turns=2, state_keys=["a"]), "state_keys must be empty or hold one entry per turn"),
        (dict(num_turns=2, turn_starts=[2, 0]), "turn_starts[1] must be an int in [2, 3]"),
        (dict(num_turns=1, turn_starts=[4]), "turn_starts[0] must be an int in [0, 3]"),
        (dict(num_turns=1, turn_starts=[True]), "turn_starts[0] must be an int"),
        (dict(num_turns=1, turn_starts=[1]), "a generated token (loss_mask 1) comes before the first turn's start"),
        (dict(num_turns=2, turn_rewards=[0.5, 0.25]), "turn_rewards must add up to reward 1.0"),
        (dict(num_turns=2, turn_rewards=[math.nan, 1.0]), "turn_rewards[0] must be finite"),
        (dict(num_turns=1, state_keys=[(1, 2)]), "state_keys[0] must be a string or None; got tuple"),
    ],
)
def test_validate_names_the_broken_invariant(changes, needle):
    with pytest.raises(InvalidSampleError, match=None) as info:
        _sample(**changes).validate()
    assert needle in str(info.value)


def test_per_turn_fields_round_trip_exactly():
    s = _sample(num_turns=2, turn_starts=[0, 2], turn_rewards=[0.1, 0.9], state_keys=["[0, 1]", None], reward=1.0)
    s.validate()
    back = Sample.from_json(s.to_json())
    assert back == s and back.state_keys == ["[0, 1]", None] and back.turn_rewards == [0.1, 0.9]
    # a whole-episode score lands on the last turn and keeps the sum
    s.set_outcome_reward(-1.0)
    assert s.turn_rewards == [0.0, -1.0] and s.reward == -1.0
    s.validate()


def test_unknown_fields_are_rejected_on_load():
    d = _sample().to_dict()
    d["respnse_ids"] = []
    with pytest.raises(InvalidSampleError, match="respnse_ids"):
        Sample.from_dict(d)


def test_group_round_trip_and_membership():
    g = Group(group_id=3, samples=[_sample(group_id=3, sample_index=i, reward=float(i)) for i in range(2)])
    g.validate()
    assert Group.from_json(g.to_json()) == g
    assert g.rewards == [0.0, 1.0]
    g.samples[1].group_id = 4
    with pytest.raises(InvalidSampleError, match="group_id 4"):
        g.validate()


def test_trainable_statuses():
    assert _sample(status="ok").trainable and _sample(status="truncated").trainable
    assert not _sample(status="failed").trainable and not _sample(status="aborted").trainable
