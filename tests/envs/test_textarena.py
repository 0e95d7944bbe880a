"""TextArenaEnv: seeded single-player TextArena games, invalid moves explained, the game's own reward."""

import pytest

pytest.importorskip("textarena", reason="textarena is not installed (pip install 'agentrl[games]')")

from agentrl.env import check_env, make  # noqa: E402
from envs.benchmarks.textarena_env import TextArenaEnv  # noqa: E402
import numpy as np  # noqa: E402


def test_guess_the_number_by_bisection_wins_with_the_games_reward():
    env = TextArenaEnv(game="GuessTheNumber-v0")
    messages, info = env.reset(seed=3)
    assert "Guess The Number" in messages[0]["content"] and info == {"game": "GuessTheNumber-v0", "game_seed": 3}
    low, high = 1, 20
    for _ in range(10):
        guess = (low + high) // 2
        obs, reward, terminated, truncated, info = env.step(f"I guess [{guess}]")
        if terminated:
            break
        assert reward == 0.0 and obs[0]["content"] in ("The target number is higher.", "The target number is lower.")
        low, high = (guess + 1, high) if "higher" in obs[0]["content"] else (low, guess - 1)
    assert (reward, terminated, truncated) == (1.0, True, False) and info["game_reward"] == 1.0


@pytest.mark.parametrize("game", ["GuessTheNumber-v0", "GuessTheNumber-v0-hardcore"])
def test_the_guess_the_number_oracle_bisects_and_wins(game):
    from agentrl.env.exploits import check_exploits

    env = TextArenaEnv(game=game)
    for seed in range(12):
        env.reset(seed=seed)
        moves = []
        for _ in range(10):
            moves.append(env.oracle())
            _, reward, terminated, _, _ = env.step(moves[-1])
            if terminated:
                break
        assert reward == 1.0 and len(moves) <= (5 if game == "GuessTheNumber-v0" else 6), (seed, moves)
        assert moves[0] == ("[10]" if game == "GuessTheNumber-v0" else "[25]") and len(set(moves)) == len(moves)
    report = check_exploits(lambda: TextArenaEnv(game=game), seeds=[0, 1])
    assert report.oracle_checked and "oracle" not in [f.cheat for f in report.findings]
    assert TextArenaEnv(game="Sokoban-v0").oracle is None  # no solver for it here


def test_same_seed_same_board_and_invalid_moves_are_explained():
    env = TextArenaEnv(game="Sokoban-v0")
    first = env.reset(seed=1)[0][0]["content"]
    assert env.reset(seed=1)[0][0]["content"] == first
    assert any(env.reset(seed=s)[0][0]["content"] != first for s in (2, 3, 4))
    env.reset(seed=1)  # the player stands below the top wall
    obs, reward, terminated, _, info = env.step("[up]")
    assert "invalid move" in obs[0]["content"] and "wall" in obs[0]["content"]
    assert (reward, terminated, info["invalid_move"], info["invalid_moves"]) == (0.0, False, True, 1)
    obs, reward, terminated, _, info = env.step("no move here")  # Sokoban allows one invalid move
    assert terminated and info["invalid_moves"] == 2 and "Invalid" in info["reason"]


def test_unknown_and_multi_player_games_fail_with_the_reason():
    with pytest.raises(ValueError, match="did you mean Sokoban-v0"):
        TextArenaEnv(game="Sokobann-v0")
    with pytest.raises(ValueError, match="not single-player"):
        TextArenaEnv(game="TicTacToe-v0").reset(seed=0)


@pytest.mark.parametrize("game", ["Sokoban-v0", "Minesweeper-v0-small", "Countdown-v0"])
def test_check_env(game):
    report = check_env(lambda: make("agentrl/TextArena-v0", game=game), fuzz_samples=4)
    assert report.ok, report.problems


def test_a_row_seed_that_is_not_an_integer_is_named():
    env = TextArenaEnv(game="GuessTheNumber-v0")
    with pytest.raises(ValueError, match=r"options\['seed'\] must be an integer; got str 's'"):
        env.reset(options={"seed": "s"})
    assert env.reset(options={"seed": np.int64(3)})[1]["game_seed"] == 3
