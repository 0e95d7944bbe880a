"""``agentrl new-env``: each variant's generated project passes its own tests unchanged, and the tutorial
(docs/new_env.md) runs from a fresh copy of the repository, command by command, as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.env.new_env import main, names

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = (ROOT / "docs" / "new_env.md").read_text()
SMALL = ["--num-rollout", "1", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--eval-max-prompts", "3"]
"""Appended to the tutorial's training command: one rollout of 2 x 2 episodes, 3 held-out prompts."""


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, not ignored)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                                capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("envs/demo", "tests/envs/test_demo", "recipes/demo")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def run(clone: Path, line: str, *extra: str) -> str:
    argv = shlex.split(line) + list(extra)
    if argv[0] == "agentrl":
        argv = [sys.executable, "-m", "agentrl.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\n{out[-4000:]}"
    return out


def test_names():
    assert names("demo") == ("demo", "DemoEnv", "Demo-v0")
    assert names("letter-count") == ("letter_count", "LetterCountEnv", "LetterCount-v0")
    with pytest.raises(ValueError, match="must start with a letter"):
        names("9lives")
    for keyword_name in ("class", "Import", "for"):  # `from envs.class import ...` would not parse
        with pytest.raises(ValueError, match="is a Python keyword"):
            names(keyword_name)


def test_refuses_a_name_whose_module_a_folder_would_shadow(tmp_path, capsys):
    (tmp_path / "envs" / "benchmarks").mkdir(parents=True)
    (tmp_path / "envs" / "__init__.py").write_text("")
    (tmp_path / "recipes").mkdir()
    assert main(["benchmarks", "--root", str(tmp_path)]) == 2
    assert "envs/benchmarks is a folder" in capsys.readouterr().err
    assert not (tmp_path / "envs" / "benchmarks.py").exists()


def test_refuses_outside_a_checkout_and_over_existing_files(tmp_path, capsys):
    assert main(["demo", "--root", str(tmp_path)]) == 2
    assert "run it in the root of an agentrl checkout" in capsys.readouterr().err
    (tmp_path / "envs").mkdir()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("")
    assert main(["demo", "--root", str(tmp_path)]) == 0
    assert main(["demo", "--root", str(tmp_path)]) == 1
    assert "already there" in capsys.readouterr().err
    assert (tmp_path / "envs" / "__init__.py").read_text().count('register("Demo-v0"') == 1


@pytest.mark.parametrize("flags", [[], pytest.param(["--tools"], marks=pytest.mark.slow),
                                   pytest.param(["--async"], marks=pytest.mark.slow)], ids=["plain", "tools", "async"])
def test_the_generated_project_passes_its_own_tests(flags, tmp_path):
    clone = fresh_copy(tmp_path)
    out = run(clone, "agentrl new-env demo", *flags)
    assert "registered agentrl/Demo-v0" in out
    out = run(clone, "python -m pytest -q -p no:cacheprovider tests/envs/test_demo.py envs/demo.py")
    assert re.search(r"\b[34] passed", out), out
    out = run(clone, "agentrl check-env --exploits Demo-v0")
    assert "ok    agentrl/Demo-v0" in out and "oracle earned full reward" in out
    out = run(clone, "python -m ruff check envs/demo.py tests/envs/test_demo.py")
    assert "All checks passed" in out


def tutorial_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", TUTORIAL, flags=re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_tutorial_end_to_end(tmp_path):
    """Every command of docs/new_env.md in order, in a fresh copy, with the README's model (~3 min on 2 cores)."""
    clone = fresh_copy(tmp_path)
    commands = tutorial_commands()
    assert commands[0] == "agentrl new-env demo" and len(commands) == 7
    for line in commands:
        extra: list[str] = []
        if line.startswith("python train.py"):
            extra = SMALL
        elif line.startswith("agentrl eval --"):
            extra = ["--eval-max-prompts", "3"]
        out = run(clone, line, *extra)
        if line.startswith("python -m pytest"):
            assert "3 passed" in out
        elif line.startswith("agentrl check-env"):
            assert "ok    agentrl/Demo-v0  (" in out and "no cheat earned reward, oracle earned full reward" in out
        elif line.startswith("python train.py"):
            assert re.search(r"held-out unseen/success: \d\.\d{3} before -> \d\.\d{3} after", out), out[-2000:]
        elif line.startswith("agentrl eval compare"):
            assert "unseen" in out
    assert (clone / "runs" / "demo" / "training.png").exists()
