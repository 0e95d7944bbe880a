"""Timing spans: ``with timer("rollout"): ...`` accumulates seconds under ``perf/rollout_time``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    def __init__(self) -> None:
        self.spans: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans[name] = self.spans.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """``perf/<name>_time`` for every span since the last pop, plus ``perf/step_time``."""
        out = {f"perf/{k}_time": v for k, v in self.spans.items()}
        out["perf/step_time"] = sum(self.spans.values())
        self.spans = {}
        return out
