"""Errors for unknown names in the algorithm registries: expected / got / did you mean."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name_error(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """A ``ValueError`` naming the unknown ``name``, every valid one, and the closest match.

    Example::

        >>> str(unknown_name_error("advantage estimator", "gpro", ["grpo", "rloo"]))
        "unknown advantage estimator 'gpro'; expected one of: grpo, rloo. Did you mean 'grpo'?"
    """
    names = sorted(valid)
    message = f"unknown {kind} {name!r}; expected one of: {', '.join(names)}."
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
    if close:
        message += f" Did you mean {close[0]!r}?"
    return ValueError(message)


def check_name(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return ``name`` if it is in ``valid``, else raise :func:`unknown_name_error`."""
    valid = tuple(valid)
    if name not in valid:
        raise unknown_name_error(kind, name, valid)
    return name
