"""The checks ``pytest`` runs beside the tests: ruff and mypy over the repository, with the
configuration in pyproject.toml ([tool.ruff], [tool.mypy]); a finding fails with their report.

mypy keeps its cache in ``.mypy_cache`` (a run after a small change rechecks only what changed).
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _needs(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'")


def test_ruff_finds_nothing():
    _needs("ruff")
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff check:\n{result.stdout}{result.stderr}"


def test_mypy_finds_nothing():
    _needs("mypy")
    result = _run("mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, f"mypy:\n{result.stdout}{result.stderr}"
