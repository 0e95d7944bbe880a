"""Packages whose names are imported on first use, so ``import agentrl.x.config`` stays light.

``train.py --help`` and ``agentrl --help`` read the settings classes only; importing a package's
``__init__`` must not import torch for that. A package lists what it exports and where it lives, and
:func:`lazy_package` makes those names resolve on first use. An exported name wins over a submodule
of the same name (``agentrl.algo.aggregate`` is the function, as it was when the package imported
everything at once), however the submodule was first imported.

Example::

    >>> import sys, types
    >>> sys.modules["demo_pkg"] = types.ModuleType("demo_pkg")
    >>> lazy_package("demo_pkg", {"os.path": ["join"], "os": ["sep"]})
    >>> import demo_pkg
    >>> demo_pkg.join("a", "b"), "join" in dir(demo_pkg)
    ('a/b', True)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def lazy_package(package: str, modules: dict[str, list[str]]) -> None:
    """Make the names of ``modules`` (each module, absolute or relative to the package with a leading dot, mapped
    to the names it exports) attributes of ``package`` that are imported on first use."""
    exports = {name: module for module, names in modules.items() for name in names}

    class LazyPackage(types.ModuleType):
        def __getattribute__(self, name: str) -> Any:
            module = exports.get(name)
            if module is not None:
                return getattr(importlib.import_module(module, package), name)
            return super().__getattribute__(name)

        def __dir__(self) -> list[str]:
            return sorted(set(super().__dir__()) | set(exports))

    sys.modules[package].__class__ = LazyPackage
