"""skyrl-gym's own GSM8K environment (skyrl_gym.envs.gsm8k) through the adapter: its reward, check-env
with the exploit check, and a 2-rollout training run."""

import pytest

pytest.importorskip("skyrl_gym", reason="pip install 'agentrl[skyrl]'")

from agentrl.env import make  # noqa: E402
from agentrl.env.adapters.skyrl_gym import SkyRLGymEnv  # noqa: E402
from agentrl.env.cli import main as check_env_main  # noqa: E402


def test_skyrl_gsm8k_rewards_as_skyrl_does():
    env = make("agentrl/SkyRL-v0")
    messages, info = env.reset(options={"prompt": "What is 40 + 2?", "label": "#### 42"})
    assert messages[-1]["content"].startswith("What is 40 + 2?") and info["skyrl_env"] == "gsm8k"
    assert env.step("40 + 2 = 42\n#### 42")[1:4] == (1.0, True, False)
    env.reset(options={"prompt": "What is 40 + 2?", "label": "42"})
    assert env.step("#### 41")[1:3] == (0.0, True)
    env.reset(options={"prompt": [{"role": "user", "content": "2 + 2?"}],
                       "extras": {"reward_spec": {"method": "rule", "ground_truth": "4"}}})
    assert env.step("#### 4")[1] == 1.0


def test_unknown_skyrl_id_names_the_registered_ones():
    with pytest.raises(ValueError, match="skyrl-gym has no environment 'gsm9k'; registered: .*'gsm8k'"):
        SkyRLGymEnv("gsm9k")


def test_check_env_with_exploits(capsys):
    assert check_env_main(["SkyRL-v0", "--exploits", "--fuzz-samples", "2"]) == 0
    assert "ok    agentrl/SkyRL-v0" in capsys.readouterr().out


def test_two_rollouts(two_rollouts):
    rows = [{"prompt": "What is 40 + 2?", "label": "42"}, {"prompt": "What is 3 * 4?", "label": "12"}]
    two_rollouts("agentrl/SkyRL-v0", rows)
