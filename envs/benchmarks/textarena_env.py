"""``agentrl/TextArena-v0``: any single-player TextArena game as an agentrl environment.

`TextArena <https://github.com/LeonGuertler/TextArena>`_ (``pip install 'agentrl[games]'``)
ships ~100 text games; the single-player ones (Sokoban, Minesweeper, Countdown, FrozenLake,
GuessTheNumber, LightsOut, Mastermind, TowerOfHanoi, Crosswords, ...) play here by their id:
``make("agentrl/TextArena-v0", game="Sokoban-v0")``. The game's own text is the observation:
``reset`` sends its rules and first board, and each reply is the player's move (TextArena games
read the move from ``[brackets]``, as their rules say). Each move is answered with what the game
said about it: the new board, a hint, or, for a move the game refuses, the game's explanation
("You attempted an invalid move. Reason: ..."), counted in ``info["invalid_moves"]``. The game
decides when an invalid move ends it (most allow none or a few).

Reward: the game's own, given when it ends (TextArena's ``close()`` rewards; e.g. 1 for a solved
Sokoban, a progress score in [0, 1] for Countdown; a reward that is not a number, as Countdown
gives for an invalid end, counts 0 and goes to ``info["reason"]``). ``terminated`` is the game's end; the
registered ``max_turns`` truncates. Games play without their TextArena observation wrappers
(the ``-raw`` version of the id), because the chat history already holds the earlier turns.

Oracle: for the games with a solver here (GuessTheNumber: bisection over the range the hints leave
open), ``oracle()`` is the move that plays the current state well, so ``check-env --exploits`` checks
that it wins and ``--sft-data oracle`` warm-starts on its games; ``None`` for the other games.

Seeded instances: ``reset(seed=s)`` passes ``s`` to the game's reset, so the same seed deals the
same board; ``reset()`` draws the seed from the env's RNG. TextArena seeds Python's global
``random`` in ``reset``, and some games draw from it while they play, so every call into a
TextArena game holds one lock (:data:`_GAME_LOCK`): concurrent episodes stay reproducible, at
the price of running their (fast) game steps one at a time. Held out: evaluate on seeds training
does not use (``agentrl eval --task NAME=TextArena-v0,game=Sokoban-v0`` deals seeds from
``offset``).

Offline: Wordle, Hangman and other games that read NLTK corpora need those corpora downloaded
(``python -m nltk.downloader words``); without them their reset fails with NLTK's LookupError.

Example (needs ``textarena``)::

    >>> env = TextArenaEnv(game="GuessTheNumber-v0")            # doctest: +SKIP
    >>> messages, info = env.reset(seed=3)                      # doctest: +SKIP
    >>> env.step("My guess: [10]")[0][0]["content"]             # doctest: +SKIP
    'The target number is lower.'
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.utils.extras import require

__all__ = ["TextArenaEnv", "single_player_games"]

_GAME_LOCK = threading.Lock()
"""Held around every call into a TextArena game: they share Python's global ``random``."""
_PLAYER = 0


def _textarena() -> Any:
    return require("textarena", extra="games", what="TextArena", package="textarena")


def single_player_games() -> list[str]:
    """Registered TextArena ids whose games take one player (tried with a seeded reset; slow-ish)."""
    ta = _textarena()
    found = []
    for game_id in sorted(ta.envs.registration.ENV_REGISTRY):
        if game_id.endswith(("-raw", "-train")):
            continue
        try:
            with _GAME_LOCK:
                ta.make(game_id).reset(num_players=1, seed=0)
        except Exception:  # a multi-player game refuses one player; others may lack data
            continue
        found.append(game_id)
    return found


class TextArenaEnv(TextEnv):
    """One single-player TextArena game (see the module docstring).

    Args:
        game: A TextArena environment id, e.g. ``"Sokoban-v0"``, ``"Minesweeper-v0-small"``.
        game_kwargs: Keyword arguments for the game's constructor (its size, turns, ...).
        system_prompt: An optional system message before the game's rules.
        max_reply_chars: Only the reply's last this many characters reach the game.
    """

    def __init__(self, *, game: str = "Sokoban-v0", game_kwargs: dict[str, Any] | None = None,
                 system_prompt: str | None = None, max_reply_chars: int = 4096) -> None:
        super().__init__()
        ta = _textarena()
        registry = ta.envs.registration.ENV_REGISTRY
        if game not in registry:
            import difflib

            close = difflib.get_close_matches(game, list(registry), n=3)
            raise ValueError(f"unknown TextArena game {game!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        self.game = game
        self.game_kwargs = dict(game_kwargs or {})
        raw = f"{game}-raw" if f"{game}-raw" in registry else game
        self._env = ta.make(raw, **self.game_kwargs)
        self.system_prompt = system_prompt
        self.max_reply_chars = int(max_reply_chars)
        self.started = self.done = False
        self.invalid_moves = 0
        self.game_seed: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        game_seed = options["seed"] if "seed" in options else seed
        if game_seed is not None:
            if isinstance(game_seed, bool) or not isinstance(game_seed, numbers.Integral):
                raise ValueError(f"options['seed'] must be an integer; got {type(game_seed).__name__} {game_seed!r}")
            game_seed = int(game_seed)
        if game_seed is None:
            game_seed = int(self.np_random.integers(0, 2**31 - 1))
        with _GAME_LOCK:
            try:
                self._env.reset(num_players=1, seed=game_seed)
            except AssertionError as e:  # TextArena asserts the player count
                raise ValueError(f"TextArena game {self.game!r} is not single-player: {e}") from e
            _, observation = self._env.get_observation()
        self.game_seed, self.started, self.done, self.invalid_moves = game_seed, True, False, 0
        messages = [{"role": "user", "content": self._text(observation)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages, {"game": self.game, "game_seed": game_seed}

    def step(self, action: str):
        if not self.started:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the game is over; call reset()"}
        text = action if isinstance(action, str) else str(action)
        text = text[-self.max_reply_chars:]
        with _GAME_LOCK:
            done, _ = self._env.step(text)
            _, observation = self._env.get_observation()
            rewards, game_info = self._env.close() if done else (None, None)
        invalid = sum(1 for sender, message, _ in observation
                      if sender != _PLAYER and "invalid move" in str(message).lower())
        self.invalid_moves += invalid
        info: dict[str, Any] = {"game": self.game, "invalid_move": bool(invalid), "invalid_moves": self.invalid_moves}
        reward = 0.0
        if done:
            self.done = True
            raw = (rewards or {}).get(_PLAYER, 0.0)
            player = dict((game_info or {}).get(_PLAYER, {}))
            try:
                reward = float(raw)
            except (TypeError, ValueError):  # Countdown 0.7.4 reports an invalid end as the reward: text
                reward, player["reason"] = 0.0, player.get("reason") or str(raw)
            info["game_reward"] = reward
            info["turns"] = int(player.get("turn_count", 0))
            reason = str(player.get("reason") or "")
            if reason:
                info["reason"] = reason[:500]
            if reason.lower().startswith("invalid") and not invalid:  # the move that ended the game
                self.invalid_moves += 1
                info.update(invalid_move=True, invalid_moves=self.invalid_moves)
        reply = self._text(observation)
        return ([{"role": "user", "content": reply}] if reply else []), reward, done, False, info

    @property
    def oracle(self) -> Callable[[], str] | None:
        """The move the game's solver makes in the current state (module doc); None without a solver."""
        solver = _SOLVERS.get(type(self._env).__name__)
        if solver is None:
            return None
        return lambda: solver(self._env)

    @staticmethod
    def _text(observation: list[Any]) -> str:
        """The game's messages of one turn (the echo of the player's own move left out)."""
        return "\n\n".join(str(message) for sender, message, _ in observation if sender != _PLAYER).strip()


def _guess_the_number(game: Any) -> str:
    """Bisection: the middle of the range the hints so far leave open."""
    low, high = int(game.min_number), int(game.max_number)
    for guess, hint in game.state.game_state["guess_history"]:
        if hint == "higher":
            low = max(low, int(guess) + 1)
        else:
            high = min(high, int(guess) - 1)
    return f"[{(low + high) // 2}]"


_SOLVERS: dict[str, Callable[[Any], str]] = {"GuessTheNumberEnv": _guess_the_number}
"""Solvers by the TextArena game's class name (every id and size of the game)."""
