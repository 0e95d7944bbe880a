"""Gymnasium toy-text games played by an LLM: FrozenLake, Taxi, Blackjack, CliffWalking.

``GymTextEnv`` wraps ``gymnasium.make(game_id, **game_kwargs)``. Each turn the model sees the
game state as text and answers with a move; the game's own reward passes through.

* **Messages.** ``reset`` sends the rules, the state and how to answer; every valid move is
  answered with what happened, the reward and the new state.
* **Moves.** The last ``<action>...</action>`` tag is read (its last move word counts); without
  a tag, the last move word anywhere in the reply. Only the reply's last ``max_reply_chars``
  characters (64 KiB) are read: a runaway reply costs the event loop a few milliseconds. Case does not matter. A reply without a valid
  move gets an observation listing the valid moves; the game does not advance,
  ``info["invalid_actions"]`` counts it and the reward is ``-invalid_action_penalty`` (default 0:
  the turn it wastes under ``max_turns`` is the cost).
* **Reward.** ``reward_scale * game_reward`` (default scale 1: the game's reward unchanged;
  ``info["game_reward"]`` always holds the unscaled value). FrozenLake: 1 at the goal, else 0.
  Taxi: -1 a move, +20 for delivering, -10 for an illegal pickup/dropoff. Blackjack: +1 win,
  0 draw, -1 loss. CliffWalking: -1 a move, -100 for stepping off the cliff (back to the start).
* **Ends.** ``terminated`` is the game's; the game's own ``TimeLimit`` (FrozenLake 100 moves,
  Taxi 200) gives ``truncated``; the registered ``max_turns`` (invalid replies included)
  truncates through ``TurnLimit``.
* **State keys.** ``info["state_key"]`` (reset and every step) names the state the next move is
  made from: the game's observation as text (FrozenLake and CliffWalking: the position; Taxi: the
  encoded taxi position, passenger and destination; Blackjack: the player's total, the dealer's
  card and the usable ace). A reply without a valid move leaves it unchanged. With the same seed
  (one map, one deal) equal keys are the same state, which step-level estimators (GiGPO) compare.
* **Seeding.** ``reset(seed=s)`` resets the game with ``seed=s`` (the same start as
  ``gymnasium.make(game_id).reset(seed=s)``); ``reset()`` draws the game's seed from the env's RNG.
* **FrozenLake.** ``is_slippery`` defaults to False here (gymnasium's default is True): a
  text agent's plan should do what it says; pass ``game_kwargs={"is_slippery": True}`` for the
  stochastic lake. ``map_name`` (``"4x4"``, ``"8x8"``) and ``desc`` pass through; with
  ``random_map_size=n`` every reset plays a fresh solvable ``n x n`` map from
  ``generate_random_map(n, random_map_p, seed)``; the reset option ``map_size`` overrides ``n`` for one
  episode (a curriculum's lever: ``--curriculum-option map_size``). ``surroundings=True`` adds a line
  to every state that names the four tiles next to the player and where the goal lies, e.g. "Around
  you: left edge, down safe, right hole, up edge. The goal is 3 down and 2 right." (the same facts
  as the map, read for the model: a small model that cannot yet find its row and column in the grid
  can still learn to step around a hole).
* **Oracle and shaping (FrozenLake).** ``oracle()`` is the next move of a shortest path to the goal
  around the holes (breadth-first search on the map), as a reply: the demonstrations of a warm start
  (``--sft-data oracle``). ``shaping={"progress": w}`` adds ``w * (phi(s') - phi(s))`` to every move,
  with ``phi = 1 - d / d0`` (``d`` the shortest-path distance to the goal, ``d0`` the start's; 0 in a
  hole or where the goal cannot be reached): potential-based shaping (Ng, Harada and Russell 1999,
  "Policy invariance under reward transformations"), which keeps the optimal policies. How it can be
  gamed: walking towards the goal and stopping short earns up to ``w * (1 - 1/d0)`` without reaching
  it; walking back, in circles or into a hole gives that back (the terms telescope to ``w * phi`` of
  where the episode ends), so an episode earns at most ``w`` from it, and with ``w < 1`` never the
  goal's reward. Every step's ``info["reward_components"]`` holds ``task`` (the scaled game reward),
  ``invalid_action`` (minus the penalty) and the shaping terms (:mod:`agentrl.env.shaping`);
  ``exploits()`` are the scripted policies that collect the shaping without reaching the goal.

Other games: pass ``adapter=GameAdapter(...)`` for any gymnasium env with a ``Discrete`` action
space (rules text, state rendering, move words).

Example::

    >>> env = GymTextEnv("FrozenLake-v1")
    >>> messages, info = env.reset(seed=0)
    >>> moves = ["right", "right", "down", "down", "down", "right"]
    >>> [env.step(f"<action>{m}</action>")[1] for m in moves][-1]
    1.0
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import gymnasium
import numpy as np

from agentrl.env.core import TextEnv
from agentrl.env.shaping import combine, shaping_weights
from envs._math_grading import last_tag

__all__ = ["GAMES", "MAX_REPLY_CHARS", "SHAPING_TERMS", "GameAdapter", "GymTextEnv", "parse_move"]

MAX_REPLY_CHARS = 65_536
"""Default characters read at the end of a reply for its move."""
SHAPING_TERMS = {"progress": "FrozenLake: w * the change of 1 - (shortest-path distance to the goal) / (the start's), "
                             "potential-based; at most w an episode"}
"""The shaping terms ``GymTextEnv(shaping=...)`` takes (see the module doc)."""


@dataclass(frozen=True)
class GameAdapter:
    """How one gymnasium game is shown to and played by a language model."""

    name: str
    """Shown in messages and ``info["game"]``."""
    moves: tuple[str, ...]
    """Move words; position ``i`` is the game's action ``i``."""
    rules: Callable[[gymnasium.Env], str]
    """The rules, given the unwrapped game."""
    render: Callable[[gymnasium.Env, Any, bool], str]
    """The state as text, given the unwrapped game, its latest observation and whether the game is over."""
    aliases: tuple[tuple[str, int], ...] = ()
    """More accepted words (lower case) and the action each means."""
    default_kwargs: tuple[tuple[str, Any], ...] = ()
    """``gymnasium.make`` keyword defaults for the text version (the caller's win)."""


def parse_move(text: str, adapter: GameAdapter) -> int | None:
    """The action id ``text`` asks for: the last move word inside the last ``<action>`` tag, or
    (no tag) the last move word anywhere; None when there is none. "Last" is the move word that
    ends last: one search of the reversed text finds it."""
    words, pattern = _move_words(adapter)
    tagged = last_tag(text, "action")
    scope = tagged if tagged is not None else text
    last = pattern.search(scope.lower()[::-1])
    if last is None:
        return None
    return words[re.sub(r"\s+", " ", last.group(1)[::-1])]


@functools.lru_cache(maxsize=64)
def _move_words(adapter: GameAdapter) -> tuple[dict[str, int], re.Pattern[str]]:
    """Move word -> action id, and a pattern of every move word spelled backwards (longest first)."""
    words = {w.lower(): i for i, w in enumerate(adapter.moves)} | dict(adapter.aliases)
    backwards = (re.escape(w[::-1]).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    return words, re.compile(r"(?<![a-z])(" + "|".join(backwards) + r")(?![a-z])")


# -- the games ----------------------------------------------------------------------------------
def _frozen_lake_rules(game: Any) -> str:
    slip = (
        "The ice is slippery: you may slide sideways instead of moving where you chose."
        if len(game.P[0][0]) > 1 else "The ice is not slippery: every move goes where you chose."
    )
    return (
        "You are playing FrozenLake. Walk from the start S to the goal G across a frozen lake "
        "without falling into a hole H. F is safe frozen ice, P marks where you are. Row 1 is the top "
        "row, column 1 the leftmost. Moving into the edge leaves you where you are. "
        f"{slip} Reaching G gives reward 1 and ends the game; falling into a hole ends it with reward 0."
    )


def _frozen_lake_render(game: Any, obs: Any, over: bool) -> str:
    rows, cols = game.desc.shape
    r, c = divmod(int(obs), cols)
    grid = [[ch.decode() for ch in row] for row in game.desc]
    grid[r][c] = "P"
    goal = np.argwhere(game.desc == b"G")[0]
    lines = "\n".join(" ".join(row) for row in grid)
    text = f"{lines}\nYou are at row {r + 1}, column {c + 1}; the goal is at row {goal[0] + 1}, column {goal[1] + 1}."
    tile = game.desc[r, c]
    if tile == b"H":
        text += " You fell into a hole."
    elif tile == b"G":
        text += " You reached the goal!"
    return text


_TAXI_NAMES = ("R (red)", "G (green)", "Y (yellow)", "B (blue)")


def _taxi_rules(game: Any) -> str:
    return (
        "You are playing Taxi on a 5x5 grid. Drive to the passenger, pick them up, drive to their "
        "destination and drop them off. Row 1 is the top row, column 1 the leftmost; north is up. "
        "In the map, '|' is a wall you cannot drive through and ':' is open road; T is the taxi, "
        "R, G, Y and B are the four stops. Every move costs -1; delivering the passenger gives +20 "
        "and ends the game; picking up or dropping off at the wrong place costs -10."
    )


def _taxi_render(game: Any, obs: Any, over: bool) -> str:
    row, col, passenger, dest = game.decode(int(obs))
    lines = [[ch.decode() for ch in r] for r in game.desc]
    lines[1 + row][2 * col + 1] = "T"
    grid = "\n".join("".join(r) for r in lines)
    where = "in the taxi" if passenger == 4 else "waiting at " + _taxi_stop(game, passenger)
    return (
        f"{grid}\nThe taxi is at row {row + 1}, column {col + 1}. The passenger is {where}. "
        f"The destination is {_taxi_stop(game, dest)}."
    )


def _taxi_stop(game: Any, i: int) -> str:
    r, c = game.locs[i]
    return f"{_TAXI_NAMES[i]} at row {r + 1}, column {c + 1}"


def _blackjack_rules(game: Any) -> str:
    natural = ""
    if getattr(game, "sab", False):
        natural = " A natural (an ace and a ten-valued card as your first two cards) wins unless the dealer has one too."
    elif getattr(game, "natural", False):
        natural = " A winning natural (an ace and a ten-valued card as your first two cards) pays +1.5."
    return (
        "You are playing Blackjack against the dealer. Cards are drawn from an infinite deck; face "
        "cards count 10 and an ace counts 11 unless that would take you over 21 (then it counts 1). "
        "'hit' draws a card; going over 21 loses at once. 'stick' ends your turn: the dealer draws "
        "until 17 or more, and whoever is closer to 21 without going over wins. Reward: +1 for a "
        f"win, 0 for a draw, -1 for a loss.{natural}"
    )


def _blackjack_render(game: Any, obs: Any, over: bool) -> str:
    total, dealer_card, usable = (int(x) for x in obs)
    cards = ", ".join(_card(c) for c in game.player)
    ace = "with an ace counted as 11" if usable else "no ace counted as 11"
    text = f"Your cards: {cards} (total {total}, {ace}). The dealer shows: {_card(dealer_card)}."
    if over:  # the hidden card is shown only at the end
        dealer_total = sum(game.dealer) + (10 if 1 in game.dealer and sum(game.dealer) + 10 <= 21 else 0)
        text += f" Dealer's hand: {', '.join(_card(c) for c in game.dealer)} (total {dealer_total})."
    return text


def _card(value: int) -> str:
    return "ace" if value == 1 else str(value)


def _cliff_rules(game: Any) -> str:
    return (
        "You are playing CliffWalking on a 4x12 grid. Walk from the start S (bottom left) to the goal "
        "G (bottom right). C marks the cliff: stepping onto it costs -100 and sends you back to S. "
        "'.' is safe ground and P marks where you are. Row 1 is the top row, column 1 the leftmost. "
        "Every move costs -1, so a short safe path is best; reaching G ends the game."
    )


def _cliff_render(game: Any, obs: Any, over: bool) -> str:
    rows, cols = game.shape
    r, c = divmod(int(obs), cols)
    grid = [["C" if game._cliff[i, j] else "." for j in range(cols)] for i in range(rows)]
    grid[rows - 1][0], grid[rows - 1][cols - 1] = "S", "G"
    grid[r][c] = "P"
    return "\n".join(" ".join(row) for row in grid) + f"\nYou are at row {r + 1}, column {c + 1}."


GAMES: MappingProxyType[str, GameAdapter] = MappingProxyType({
    "FrozenLakeEnv": GameAdapter(
        "FrozenLake", ("left", "down", "right", "up"), _frozen_lake_rules, _frozen_lake_render,
        default_kwargs=(("is_slippery", False),),
    ),
    "TaxiEnv": GameAdapter(
        "Taxi", ("south", "north", "east", "west", "pickup", "dropoff"), _taxi_rules, _taxi_render,
        aliases=(("down", 0), ("up", 1), ("right", 2), ("left", 3), ("pick up", 4), ("drop off", 5)),
    ),
    "BlackjackEnv": GameAdapter(
        "Blackjack", ("stick", "hit"), _blackjack_rules, _blackjack_render, aliases=(("stand", 0),),
    ),
    "CliffWalkingEnv": GameAdapter(
        "CliffWalking", ("up", "right", "down", "left"), _cliff_rules, _cliff_render,
    ),
})
"""Built-in adapters, keyed by the class name of the unwrapped gymnasium env."""


# -- the environment ----------------------------------------------------------------------------
class GymTextEnv(TextEnv):
    """A gymnasium game played through text (see the module doc).

    Args:
        game_id: a gymnasium id (``"FrozenLake-v1"``) or an unversioned name (``"Taxi"``: its
            newest version).
        game_kwargs: passed to ``gymnasium.make`` (``map_name``, ``is_slippery``, ``natural``...).
        adapter: how to show and play the game; built-in for the four toy-text games.
        reward_scale: multiplies the game's reward.
        invalid_action_penalty: subtracted from the reward of a reply without a valid move.
        random_map_size: FrozenLake only: a fresh random ``n x n`` map every reset.
        random_map_p: the probability that a tile of a random map is frozen (not a hole).
        system_prompt: an optional system message.
        max_reply_chars: only this many characters at the end of a reply are read for its move.
        shaping: shaping term -> weight (:data:`SHAPING_TERMS`; FrozenLake's ``progress``).
        surroundings: FrozenLake only: name the tiles next to the player and the goal's direction in
            every state (module doc).
    """

    def __init__(
        self,
        game_id: str = "FrozenLake-v1",
        *,
        game_kwargs: dict[str, Any] | None = None,
        adapter: GameAdapter | None = None,
        reward_scale: float = 1.0,
        invalid_action_penalty: float = 0.0,
        random_map_size: int | None = None,
        random_map_p: float = 0.8,
        system_prompt: str | None = None,
        max_reply_chars: int = MAX_REPLY_CHARS,
        shaping: dict[str, float] | None = None,
        surroundings: bool = False,
    ):
        super().__init__()
        self.game_id = _resolve_game_id(game_id)
        kind = _class_name(gymnasium.spec(self.game_id).entry_point)
        if adapter is None and kind not in GAMES:
            raise ValueError(
                f"no built-in text adapter for {self.game_id} ({kind}); built-in: "
                f"{sorted(a.name for a in GAMES.values())}. Pass adapter=GameAdapter(...)"
            )
        self.adapter = adapter or GAMES[kind]
        self.frozen_lake = kind == "FrozenLakeEnv"
        self.game_kwargs = dict(self.adapter.default_kwargs) | dict(game_kwargs or {})
        self.game = gymnasium.make(self.game_id, disable_env_checker=True, **self.game_kwargs)
        if random_map_size is not None and kind != "FrozenLakeEnv":
            raise ValueError(f"random_map_size is for FrozenLake; got game {self.game_id}")
        n_actions = getattr(self.game.action_space, "n", None)
        if n_actions != len(self.adapter.moves):
            raise ValueError(
                f"{self.adapter.name} adapter names {len(self.adapter.moves)} moves but {self.game_id} has "
                f"action space {self.game.action_space}"
            )
        self.reward_scale, self.invalid_action_penalty = float(reward_scale), float(invalid_action_penalty)
        self.random_map_size, self.random_map_p = random_map_size, random_map_p
        self.system_prompt = system_prompt
        if max_reply_chars < 1:
            raise ValueError(f"max_reply_chars must be >= 1; got {max_reply_chars!r}")
        self.max_reply_chars = max_reply_chars
        self.shaping = shaping_weights(shaping, SHAPING_TERMS, self.adapter.name)
        self._distance: dict[int, int] = {}
        if self.shaping and not self.frozen_lake:
            raise ValueError(f"shaping {sorted(self.shaping)} is for FrozenLake; got game {self.game_id}")
        if surroundings and not self.frozen_lake:
            raise ValueError(f"surroundings is for FrozenLake; got game {self.game_id}")
        self.surroundings = surroundings
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.obs: Any = None
        self.invalid_actions = self.moves_made = 0
        self.episode_return = 0.0
        self.over = False
        self._ended = (False, False)

    def _answer_hint(self) -> str:
        moves = ", ".join(self.adapter.moves)
        return f"Reply with exactly one move ({moves}) inside <action></action> tags, e.g. <action>{self.adapter.moves[-1]}</action>."

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        game_seed = seed if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        size = (options or {}).get("map_size", self.random_map_size)
        if size is not None:
            from gymnasium.envs.toy_text.frozen_lake import generate_random_map

            if not self.frozen_lake:
                raise ValueError(f"the map_size option is for FrozenLake; got game {self.game_id}")
            desc = generate_random_map(int(size), self.random_map_p, seed=game_seed)
            self.game.close()
            self.game = gymnasium.make(self.game_id, disable_env_checker=True, **(self.game_kwargs | {"desc": desc}))
        self._reset_counters()
        self.obs, _ = self.game.reset(seed=game_seed)
        game = self.game.unwrapped
        self._distance = _distances_to_goal(game) if self.frozen_lake else {}
        text = f"{self.adapter.rules(game)}\n\n{self._render(game, False)}\n\n{self._answer_hint()}"
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        return messages, {"game": self.adapter.name, "game_seed": game_seed, "state": _json_safe(self.obs),
                          "state_key": _state_key(self.obs)}

    def step(self, action: str):
        if self.obs is None:
            raise RuntimeError("call reset() before step()")
        if self.over:
            terminated, truncated = self._ended
            return [], 0.0, terminated, truncated, self._info(None, 0.0) | {"error": "the game is over; call reset()"}
        move = parse_move(action[-self.max_reply_chars:], self.adapter)
        if move is None:
            self.invalid_actions += 1
            got = action.strip()
            shown = repr(got[:60] + "...") if len(got) > 60 else repr(got)
            msg = f"{shown} is not a valid move; nothing happened. {self._answer_hint()}"
            info = self._info(None, 0.0)
            reward, info["reward_components"] = self._reward(0.0, invalid=True)
            return [{"role": "user", "content": msg}], reward, False, False, info
        before = self.obs
        self.obs, game_reward, terminated, truncated, _ = self.game.step(move)
        game_reward = float(game_reward)
        self.moves_made += 1
        self.episode_return += game_reward
        self.over = bool(terminated or truncated)
        self._ended = (bool(terminated), bool(truncated))
        game = self.game.unwrapped
        text = f"You chose {self.adapter.moves[move]}. Reward: {game_reward:g}.\n{self._render(game, self.over)}"
        if terminated:
            text += f"\nThe game is over. Total reward: {self.episode_return:g}."
        elif truncated:
            text += f"\nThe game hit its move limit. Total reward: {self.episode_return:g}."
        else:
            text += f"\n{self._answer_hint()}"
        info = self._info(self.adapter.moves[move], game_reward)
        reward, info["reward_components"] = self._reward(self.reward_scale * game_reward, before=before)
        return [{"role": "user", "content": text}], reward, bool(terminated), bool(truncated), info

    def _render(self, game: Any, over: bool) -> str:
        """The adapter's state text, and with ``surroundings`` (FrozenLake, the game not over) the tiles
        next to the player and the goal's direction."""
        text = self.adapter.render(game, self.obs, over)
        if not self.surroundings or over:
            return text
        rows, cols = game.desc.shape
        r, c = divmod(int(self.obs), cols)
        names = {b"H": "hole", b"G": "goal"}
        around = []
        for move, (dr, dc) in zip(self.adapter.moves, _STEPS):
            inside = 0 <= r + dr < rows and 0 <= c + dc < cols
            around.append(f"{move} {names.get(game.desc[r + dr, c + dc], 'safe') if inside else 'edge'}")
        goal = np.argwhere(game.desc == b"G")[0]
        down, right = int(goal[0]) - r, int(goal[1]) - c
        parts = [f"{abs(down)} {'down' if down > 0 else 'up'}" if down else "",
                 f"{abs(right)} {'right' if right > 0 else 'left'}" if right else ""]
        return f"{text}\nAround you: {', '.join(around)}. The goal is {' and '.join(p for p in parts if p)}."

    def _reward(self, task: float, *, invalid: bool = False, before: Any = None) -> tuple[float, dict[str, float]]:
        """The step's reward and its components: the task's, the invalid-move penalty, the shaping terms."""
        earned = {"progress": self._potential(self.obs) - self._potential(before)} if before is not None else {}
        reward, parts = combine(task, earned, self.shaping)
        parts["invalid_action"] = -self.invalid_action_penalty if invalid else 0.0
        return reward + parts["invalid_action"], parts

    # -- FrozenLake's oracle and exploits ------------------------------------------------------------------
    def _potential(self, obs: Any) -> float:
        """``1 - d / d0`` (module doc): 0 at the start, 1 at the goal, 0 in a hole or where the goal is out of reach."""
        if not self._distance:
            return 0.0
        game: Any = self.game.unwrapped
        start = self._distance.get(int(np.argwhere(game.desc.flatten() == b"S")[0][0]))
        d = self._distance.get(int(obs))
        return 0.0 if d is None or not start else 1.0 - d / start

    @property
    def oracle(self) -> Callable[[], str] | None:
        """FrozenLake's oracle (:meth:`next_move`); None for the other games, which have none, so that
        ``check-env --exploits`` and ``--sft-data oracle`` see an environment without one."""
        return self.next_move if self.frozen_lake else None

    def next_move(self) -> str:
        """FrozenLake: the reply that takes the next move of a shortest path to the goal around the holes."""
        if not self.frozen_lake:
            raise NotImplementedError(f"no oracle for {self.adapter.name}: only FrozenLake has one")
        here = int(self.obs)
        best = min(((self._distance[to], move) for move, to in _neighbours(self.game.unwrapped, here)
                    if to in self._distance), default=None)
        move = best[1] if best is not None else 0
        return f"<action>{self.adapter.moves[move]}</action>"

    def exploits(self) -> dict[str, Callable[[], str]]:
        """FrozenLake: scripted policies that collect the progress shaping without reaching the goal
        (:func:`agentrl.env.shaping.check_shaping`): walking back and forth, and walking to the goal's
        neighbour and stalling there."""
        back = {0: 2, 1: 3, 2: 0, 3: 1}

        def oscillate() -> str:
            self._last = back.get(getattr(self, "_last", 2), 0) if self.moves_made else 2
            return f"<action>{self.adapter.moves[self._last]}</action>"

        def approach_and_wait() -> str:  # next to the goal, it only stalls (a reply without a move)
            return self.next_move() if self._distance.get(int(self.obs), 0) > 1 else "I wait here."

        return {"oscillate": oscillate, "approach_and_wait": approach_and_wait}

    def _info(self, move: str | None, game_reward: float) -> dict[str, Any]:
        return {
            "game": self.adapter.name, "action": move, "valid_action": move is not None,
            "invalid_actions": self.invalid_actions, "moves": self.moves_made, "game_reward": game_reward,
            "episode_return": self.episode_return, "state": _json_safe(self.obs), "state_key": _state_key(self.obs),
        }

    def close(self) -> None:
        self.game.close()
        super().close()


_STEPS = ((0, -1), (1, 0), (0, 1), (-1, 0))
"""FrozenLake's actions (left, down, right, up) as (row, column) steps."""


def _neighbours(game: Any, state: int) -> list[tuple[int, int]]:
    """``(action, next state)`` of the moves from ``state`` that leave it (not into the edge)."""
    rows, cols = game.desc.shape
    r, c = divmod(state, cols)
    return [(a, (r + dr) * cols + c + dc) for a, (dr, dc) in enumerate(_STEPS)
            if 0 <= r + dr < rows and 0 <= c + dc < cols]


def _distances_to_goal(game: Any) -> dict[int, int]:
    """Moves from each state to the goal over tiles that are not holes (breadth-first from the goal);
    states that cannot reach it are left out."""
    flat = game.desc.flatten()
    goal = int(np.argwhere(flat == b"G")[0][0])
    distance, frontier = {goal: 0}, [goal]
    while frontier:
        nxt = []
        for state in frontier:
            for _, other in _neighbours(game, state):
                if other not in distance and flat[other] != b"H":
                    distance[other] = distance[state] + 1
                    nxt.append(other)
        frontier = nxt
    return distance


def _resolve_game_id(game_id: str) -> str:
    from gymnasium.envs.registration import find_highest_version, get_env_id, parse_env_id

    ns, name, version = parse_env_id(game_id)
    if version is None:
        version = find_highest_version(ns, name)
        if version is not None:
            game_id = get_env_id(ns, name, version)
    if game_id not in gymnasium.registry:
        import difflib

        close = difflib.get_close_matches(game_id, list(gymnasium.registry), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"gymnasium has no environment {game_id!r}{hint}")
    return game_id


def _class_name(entry_point: Any) -> str:
    if isinstance(entry_point, str):
        return entry_point.rsplit(":", 1)[-1]
    return getattr(entry_point, "__name__", type(entry_point).__name__)


def _state_key(obs: Any) -> str:
    """The observation as a string: toy-text observations are the game's whole state."""
    return str(_json_safe(obs))


def _json_safe(obs: Any) -> Any:
    if isinstance(obs, (tuple, list)):
        return [_json_safe(x) for x in obs]
    if isinstance(obs, np.ndarray):
        return obs.tolist()
    if isinstance(obs, (np.integer, int)):
        return int(obs)
    if isinstance(obs, (np.floating, float)):
        return float(obs)
    return repr(obs)
