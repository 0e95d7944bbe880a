"""The documentation's Python examples: every block parses and its agentrl imports exist; the self-contained
ones run as written (on the tiny model where they name SmolLM2), so an API change that breaks them shows here.

Blocks that are fragments (they use a ``batch`` or an ``engine`` made elsewhere) are only parsed and
import-checked; docs/viewer.md's dump example runs in tests/view/test_dump.py on dumps it writes.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*/*.md"))]
OURS = ("agentrl", "envs", "tools")


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M)


def block(doc: str, starts: str) -> str:
    """The one Python block of ``docs/<doc>`` that contains ``starts``."""
    found = [b for b in python_blocks(ROOT / "docs" / doc) if starts in b]
    assert len(found) == 1, (doc, starts, len(found))
    return found[0]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_python_block_parses_and_its_imports_exist(doc):
    wrong = []
    for i, code in enumerate(python_blocks(doc)):
        try:
            tree = compile(code, f"{doc.name} block {i}", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except SyntaxError as e:
            wrong.append(f"block {i}: {e}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            wrong.append(f"block {i}: from {node.module} import {alias.name}: no such name")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in OURS:
                        importlib.import_module(alias.name)
    assert not wrong, f"{doc.name}:\n  " + "\n  ".join(wrong)


def run(code: str, timeout: int = 300) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_engine_example_runs():
    """docs/engine.md "Use": a chat prompt's tokens in, a completion out (its prompt built so that any
    transformers version gives token ids)."""
    code = block("engine.md", "async with EmbeddedEngine(")
    out = run(code.replace('"smollm2-135m-instruct"', '"tiny-qwen2"'))
    assert re.search(r"(stop|length) \[-?\d", out), out


def test_the_search_environment_example_runs():
    """docs/search.md: a search, then the right answer, over the shipped corpus (offline, no model)."""
    out = run(block("search.md", 'make("agentrl/Search-v0")'))
    assert '<information>Doc 1(Title: "Ottawa")' in out


@pytest.mark.slow
def test_the_eval_example_runs():
    """docs/eval.md "From Python": evaluate() on FrozenLake with pass@2 (about a minute on a CPU)."""
    out = run(block("eval.md", "await evaluate("), timeout=900)
    assert 0.0 <= float(out.strip().splitlines()[-1]) <= 1.0


ENTRY_POINT_GROUPS = {"agentrl.envs"}  # a plugin's entry-point group, not a module


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_dotted_name_a_doc_gives_exists(doc):
    """``agentrl.x.y`` / ``envs.x`` / ``tools.x`` in inline code (a module, or a name in one) can be imported."""
    names = set(re.findall(r"`((?:agentrl|envs|tools)\.[A-Za-z_][\w.]*\w)(?:\(|`)", doc.read_text())) - ENTRY_POINT_GROUPS
    missing = [n for n in sorted(names) if not _resolves(n)]
    assert not missing, f"{doc.name}: no such module or name: {missing}"
