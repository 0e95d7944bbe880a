"""Optional dependencies: importing one that is missing says, in one line, which extra installs it.

agentrl's core installs with ``pip install -e .``; environments, retrievers and backends that need
more import it through :func:`require`, so a missing package is a :class:`MissingExtra` whose
message is the fix (``pip install 'agentrl[search]'``), never a traceback. The commands print that
message alone (``train.py`` and ``agentrl eval`` exit 2; ``agentrl check-env --all`` lists the
environment as skipped).

Example::

    >>> require("json", extra="core", what="this example").dumps([1])
    '[1]'
    >>> try:
    ...     require("no_such_module_xyz", extra="search", what="BM25 retrieval", package="bm25s")
    ... except MissingExtra as e:
    ...     print(e)
    BM25 retrieval needs bm25s, which is not installed: pip install 'agentrl[search]' (or pip install bm25s)

An installed version older than the API agentrl is written against is the same kind of error::

    >>> try:
    ...     require("pytest", extra="test", what="this example", min_version="999")
    ... except MissingExtra as e:
    ...     print(e)  # doctest: +ELLIPSIS
    this example needs pytest>=999, and ... is installed: pip install -U 'agentrl[test]' (or pip install -U 'pytest>=999')
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from types import ModuleType

EXTRAS: dict[str, str] = {
    "search": "BM25 and dense retrieval (bm25s, sentence-transformers, faiss-cpu)",
    "reasoning": "reasoning-gym tasks (ReasoningGym-v0)",
    "offline": "offline data: the GSM8K test set, reasoning-gym, the GGUF reader",
    "data": "Parquet files and Hugging Face datasets (pyarrow, datasets)",
    "lora": "LoRA training (peft)",
    "megatron": "the Megatron-core trainer",
    "ray": "engines and trainer as Ray actors",
    "sglang": "launching SGLang servers",
    "skyrl": "skyrl-gym environments (SkyRL-v0, agentrl.env.adapters.skyrl_gym)",
    "mcp": "tools from MCP servers (agentrl.env.adapters.mcp_tools)",
    "openenv": "OpenEnv environments, in-process or over their server (agentrl.env.adapters.openenv)",
    "verifiers": "verifiers environments and tasksets (agentrl.env.adapters.verifiers)",
    "bfcl": "BFCL v4 function calling (BFCL-v0, BFCL-MultiTurn-v0)",
    "tau2": "τ²-bench customer service (Tau2-v0)",
    "code": "HumanEval coding with test feedback (HumanEval-v0)",
    "games": "TextArena's single-player games (TextArena-v0)",
}
"""The extras of ``pyproject.toml`` that :func:`require` names, and what each is for."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip command that installs it."""


def require(module: str, *, extra: str, what: str, package: str | None = None,
            min_version: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming ``pip install 'agentrl[extra]'``.

    ``what`` says what needs it ("BM25 retrieval"); ``package`` is its name on PyPI when that
    differs from the module's. ``min_version``: the oldest release of ``package`` whose API the
    caller is written against; an older one installed is refused before the import, in one line.
    """
    pkg = package or module.split(".")[0].replace("_", "-")
    if min_version is not None:
        installed = _installed_version(pkg)
        if installed is not None and _release(installed) < _release(min_version):
            raise MissingExtra(f"{what} needs {pkg}>={min_version}, and {installed} is installed: "
                               f"pip install -U 'agentrl[{extra}]' (or pip install -U '{pkg}>={min_version}')")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if not _is_missing(e, module):  # the package is there but broken: that error is the news
            raise
        raise MissingExtra(f"{what} needs {pkg}, which is not installed: pip install 'agentrl[{extra}]' "
                           f"(or pip install {pkg})") from e


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version, trailing zeros dropped so that "0.4.0" equals "0.4".

    >>> _release("0.4.0rc1"), _release("2.13.0+cpu"), _release("0.10.1")
    ((0, 4), (2, 13), (0, 10, 1))
    """
    numbers = [int(n) for n in re.findall(r"\d+", re.split(r"[^\d.]", version, maxsplit=1)[0])]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _is_missing(error: ImportError, module: str) -> bool:
    """True when ``error`` says that ``module`` (or a parent package of it) is absent."""
    name = getattr(error, "name", None)
    return isinstance(error, ModuleNotFoundError) and (name is None or module == name
                                                       or module.startswith(name + "."))
