"""GymTextEnv: scripted wins and losses with exact rewards, move parsing, invalid moves, seeding."""

from collections import deque

import gymnasium
import pytest

from agentrl.env import check_env, make
from envs.gym_text import GAMES, GameAdapter, GymTextEnv, parse_move


def play(env, moves):
    return [env.step(f"<action>{m}</action>") for m in moves]


def test_frozen_lake_scripted_win():
    env = GymTextEnv("FrozenLake-v1")  # 4x4, not slippery by default
    messages, info = env.reset(seed=0)
    text = messages[-1]["content"]
    assert "P F F F\nF H F H\nF F F H\nH F F G" in text and "not slippery" in text
    results = play(env, ["right", "right", "down", "down", "down", "right"])
    assert [r[1] for r in results] == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert [r[2] for r in results] == [False] * 5 + [True]
    assert not any(r[3] for r in results)
    last_info = results[-1][4]
    assert last_info["episode_return"] == 1.0 and last_info["moves"] == 6 and last_info["state"] == 15
    assert "You reached the goal!" in results[-1][0][0]["content"] and "game is over" in results[-1][0][0]["content"]


def test_frozen_lake_surroundings_name_the_tiles_next_to_the_player_and_the_goal():
    env = GymTextEnv("FrozenLake-v1", surroundings=True)
    messages, _ = env.reset(seed=0)
    assert "Around you: left edge, down safe, right safe, up edge. The goal is 3 down and 3 right." in messages[-1]["content"]
    (text,) = [m["content"] for m in env.step("<action>right</action>")[0]]
    assert "Around you: left safe, down hole, right safe, up edge. The goal is 3 down and 2 right." in text
    play(env, ["right", "down", "down"])
    (text,) = [m["content"] for m in env.step("<action>down</action>")[0]]
    assert "Around you: left safe, down edge, right goal, up safe. The goal is 1 right." in text
    assert "Around you" not in play(env, ["right"])[0][0][0]["content"]  # the game is over
    assert "Around you" not in GymTextEnv("FrozenLake-v1").reset(seed=0)[0][-1]["content"]
    with pytest.raises(ValueError, match="surroundings is for FrozenLake"):
        GymTextEnv("Taxi", surroundings=True)


def test_frozen_lake_scripted_loss():
    env = GymTextEnv("FrozenLake")
    env.reset(seed=0)
    (_, r1, t1, _, _), (obs, r2, t2, tr2, info) = play(env, ["down", "right"])  # (2,1) then the hole at (2,2)
    assert (r1, t1) == (0.0, False)
    assert (r2, t2, tr2) == (0.0, True, False)
    assert info["state"] == 5 and "game is over. Total reward: 0" in obs[0]["content"]
    assert "You fell into a hole." in obs[0]["content"]
    after = env.step("<action>down</action>")
    assert after[1:4] == (0.0, True, False) and "over" in after[4]["error"]


def test_invalid_moves_do_not_advance_and_are_counted():
    env = GymTextEnv("FrozenLake-v1", invalid_action_penalty=0.25)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("I will jump over the hole")
    assert (reward, terminated, truncated) == (-0.25, False, False)
    assert "not a valid move" in obs[0]["content"] and "left, down, right, up" in obs[0]["content"]
    assert info["invalid_actions"] == 1 and info["moves"] == 0 and info["state"] == 0 and info["valid_action"] is False
    env.step("<action>fly</action> right")  # the tag decides: 'fly' is no move
    _, reward, _, _, info = env.step("RIGHT")
    assert reward == 0.0 and info["invalid_actions"] == 2 and info["moves"] == 1 and info["state"] == 1
    default = GymTextEnv("FrozenLake")
    default.reset(seed=0)
    assert default.step("")[1] == 0.0  # no penalty unless asked for


@pytest.mark.parametrize("game, moves", [
    ("FrozenLake", ["right", "nowhere", "down"]),
    ("Taxi", ["north", "nowhere", "west"]),
    ("CliffWalking", ["up", "nowhere", "right"]),
    ("Blackjack", ["nowhere", "hit"]),
])
def test_state_keys_name_the_state_the_next_move_is_made_from(game, moves):
    env = GymTextEnv(game)
    _, info = env.reset(seed=4)
    keys, infos = [info["state_key"]], [info]
    for move in moves:
        infos.append(env.step(f"<action>{move}</action>")[4])
        keys.append(infos[-1]["state_key"])
    assert all(isinstance(k, str) for k in keys)
    assert keys == [str(info["state"]) for info in infos]  # the observation: the whole state of these games
    assert keys[0] == GymTextEnv(game).reset(seed=4)[1]["state_key"]  # seeded
    invalid = moves.index("nowhere")
    assert keys[invalid + 1] == keys[invalid]  # a reply without a move leaves the state as it was
    # equal keys, equal states: the same position reached by another path has the same key
    if game == "FrozenLake":
        other = GymTextEnv(game)
        other.reset(seed=4)
        via_down = [other.step(f"<action>{m}</action>")[4]["state_key"] for m in ("down", "right")]
        assert via_down[-1] == keys[-1] == "5"


def test_move_parsing():
    lake, taxi = GAMES["FrozenLakeEnv"], GAMES["TaxiEnv"]
    assert parse_move("<action> Down </action>", lake) == 1
    assert parse_move("not up, rather LEFT", lake) == 0  # the last move word
    assert parse_move("<action>up</action> ... <action>right</action>", lake) == 2
    assert parse_move("upward bound", lake) is None  # whole words only
    assert parse_move("<action>pick up</action>", taxi) == 4
    assert parse_move("<action>drop  off</action>", taxi) == 5
    assert parse_move("go north", taxi) == 1 and parse_move("go up", taxi) == 1
    assert parse_move("x" * 100_000, lake) is None


def _shortest_plan(game, start):
    """BFS over a deterministic toy-text game's transition table: the action list to termination."""
    seen, queue = {start: []}, deque([start])
    while queue:
        s = queue.popleft()
        for a, outcomes in game.P[s].items():
            (_, nxt, _, done), = outcomes
            if done:
                return seen[s] + [a]
            if nxt not in seen:
                seen[nxt] = seen[s] + [a]
                queue.append(nxt)
    raise AssertionError("no plan")


def test_taxi_scripted_delivery_and_rendering():
    env = GymTextEnv("Taxi")
    messages, info = env.reset(seed=3)
    game = env.game.unwrapped
    row, col, passenger, dest = game.decode(info["state"])
    text = messages[-1]["content"]
    assert f"The taxi is at row {row + 1}, column {col + 1}" in text
    assert text.splitlines()[text.splitlines().index("+---------+") + 1 + row][2 * col + 1] == "T"
    plan = _shortest_plan(game, info["state"])
    results = play(env, [GAMES["TaxiEnv"].moves[a] for a in plan])
    assert [r[1] for r in results] == [-1.0] * (len(plan) - 1) + [20.0]
    assert results[-1][2] is True and results[-1][4]["episode_return"] == 20.0 - (len(plan) - 1)
    assert "in the taxi" in results[-2][0][0]["content"]


def test_taxi_reward_scale_and_illegal_pickup():
    env = GymTextEnv("Taxi", reward_scale=0.1)
    env.reset(seed=3)  # the passenger is not at the taxi's square
    _, reward, _, _, info = env.step("<action>pickup</action>")
    assert reward == pytest.approx(-1.0) and info["game_reward"] == -10.0


def test_blackjack_is_seeded_like_gymnasium():
    for seed in range(5):
        env = GymTextEnv("Blackjack")
        _, info = env.reset(seed=seed)
        ref = gymnasium.make("Blackjack-v1")
        obs, _ = ref.reset(seed=seed)
        assert info["state"] == [int(x) for x in obs]
        _, reward, terminated, _, info = env.step("I'll stick")
        ref_obs, ref_reward, ref_terminated, _, _ = ref.step(0)
        assert (reward, terminated) == (float(ref_reward), True)
        assert info["state"] == [int(x) for x in ref_obs]


def test_blackjack_messages_hide_the_dealer_card_until_the_end():
    env = GymTextEnv("Blackjack")
    messages, _ = env.reset(seed=1)
    game = env.game.unwrapped
    assert "Your cards: " in messages[-1]["content"] and "Dealer's hand" not in messages[-1]["content"]
    assert f"The dealer shows: {'ace' if game.dealer[0] == 1 else game.dealer[0]}." in messages[-1]["content"]
    obs, *_ = env.step("stand")
    assert "Dealer's hand" in obs[0]["content"]


def test_cliff_walking_fall_and_safe_path():
    env = GymTextEnv("CliffWalking")
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step("<action>right</action>")  # onto the cliff
    assert (reward, terminated, info["state"]) == (-100.0, False, 36)
    results = play(env, ["up"] + ["right"] * 11 + ["down"])
    assert sum(r[1] for r in results) == -13.0 and results[-1][2] is True
    assert results[-1][4]["episode_return"] == -113.0


def test_game_time_limit_truncates():
    env = GymTextEnv("FrozenLake", game_kwargs={"max_episode_steps": 3})
    env.reset(seed=0)
    results = play(env, ["left", "left", "left"])
    assert [r[3] for r in results] == [False, False, True] and not results[-1][2]
    assert "move limit" in results[-1][0][0]["content"]


def test_registered_turn_limit_counts_invalid_replies():
    env = make("FrozenLake-v0")
    env.reset(seed=0)
    for _ in range(19):
        assert env.step("nothing")[3] is False
    _, _, terminated, truncated, info = env.step("nothing")
    assert (terminated, truncated, info["truncated_by"]) == (False, True, "max_turns")


def test_slippery_and_random_maps():
    slippery = GymTextEnv("FrozenLake", game_kwargs={"is_slippery": True, "map_name": "8x8"})
    text = slippery.reset(seed=0)[0][-1]["content"]
    assert "The ice is slippery" in text and "goal is at row 8, column 8" in text
    env = GymTextEnv("FrozenLake", random_map_size=5)
    first = env.reset(seed=11)[0][-1]["content"]
    assert env.reset(seed=11)[0][-1]["content"] == first
    maps = {env.reset(seed=s)[0][-1]["content"] for s in range(6)}
    assert len(maps) > 1 and "goal is at row 5, column 5" in first


def test_unseeded_reset_is_reproducible_from_the_last_seed():
    env = GymTextEnv("Blackjack")
    env.reset(seed=7)
    a = [env.reset()[1]["state"] for _ in range(4)]
    env.reset(seed=7)
    assert [env.reset()[1]["state"] for _ in range(4)] == a


def test_custom_adapter_and_errors():
    words = GameAdapter(
        "Cliff (compass)", ("north", "east", "south", "west"), lambda g: "Walk to G.", lambda g, obs, over: f"cell {obs}"
    )
    env = GymTextEnv("CliffWalking", adapter=words)
    assert env.reset(seed=0)[0][-1]["content"].startswith("Walk to G.\n\ncell 36")
    assert env.step("<action>north</action>")[4]["state"] == 24
    with pytest.raises(ValueError, match="no built-in text adapter"):
        GymTextEnv("CartPole-v1")
    with pytest.raises(ValueError, match="did you mean"):
        GymTextEnv("FrozenLak-v1")
    with pytest.raises(ValueError, match="random_map_size is for FrozenLake"):
        GymTextEnv("Taxi", random_map_size=4)
    with pytest.raises(ValueError, match="names 2 moves"):
        GymTextEnv("CliffWalking", adapter=GameAdapter("x", ("a", "b"), str, lambda g, o, v: ""))


@pytest.mark.parametrize("env_id", ["FrozenLake-v0", "Taxi-v0", "Blackjack-v0", "CliffWalking-v0"])
def test_registered_games_pass_check_env(env_id):
    report = check_env(lambda: make(env_id))
    assert report.ok, report.problems
