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
"""

from __future__ import annotations

import importlib
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


def require(module: str, *, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming ``pip install 'agentrl[extra]'``.

    ``what`` says what needs it ("BM25 retrieval"); ``package`` is its name on PyPI when that
    differs from the module's.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if not _is_missing(e, module):  # the package is there but broken: that error is the news
            raise
        pkg = package or module.split(".")[0].replace("_", "-")
        raise MissingExtra(f"{what} needs {pkg}, which is not installed: pip install 'agentrl[{extra}]' "
                           f"(or pip install {pkg})") from e


def _is_missing(error: ImportError, module: str) -> bool:
    """True when ``error`` says that ``module`` (or a parent package of it) is absent."""
    name = getattr(error, "name", None)
    return isinstance(error, ModuleNotFoundError) and (name is None or module == name
                                                       or module.startswith(name + "."))
