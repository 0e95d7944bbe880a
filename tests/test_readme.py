"""The README's commands, run as a new user would: in a fresh copy of the repository, in order.

Training commands run at reduced size (fewer, smaller rollouts: flags appended to the README's
own command, which flags override) with the README's own model; every command's output is
checked against what the README says it prints. The install commands are not run (CI runs them:
``.ci/run`` must call the README's test command verbatim).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SMALL = ["--num-rollout", "1", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--eval-max-prompts", "3",
         "--rollout-concurrency", "4"]
"""Appended to training commands: one rollout of 2 x 2 episodes, held-out sets cut to 3 prompts."""


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def command(startswith: str) -> str:
    """The README's one command line that starts with ``startswith`` (a continued line joined)."""
    lines = [line for b in blocks("bash") for line in b.replace("\\\n", " ").splitlines()]
    found = [line.split("  #")[0].strip() for line in lines if line.strip().startswith(startswith)]
    assert len(found) == 1, (startswith, found)
    return found[0]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository's files as a clone has them (tracked and new, not ignored), in a fresh folder."""
    dest = tmp_path_factory.mktemp("clone")
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def run(clone: Path, line: str, *extra: str, ok: bool = True) -> str:
    """Run a README command line in the clone (``agentrl``/``python`` from this interpreter)."""
    argv = shlex.split(line) + list(extra)
    if argv[0] == "agentrl":
        argv = [sys.executable, "-m", "agentrl.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"{line}\nexit {proc.returncode}\n{out[-4000:]}"
    return out


def test_ci_runs_the_readmes_test_command():
    lines = [line.strip() for b in blocks("bash") for line in b.splitlines() if line.strip().endswith("pytest -q")]
    assert len(lines) == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[0] in ci.splitlines(), "keep .ci/run calling the README's test command"
    quickstart = [line.strip() for b in blocks("bash") for line in b.splitlines()
                  if "train.py --config recipes/quickstart/config.yaml" in line and line.startswith("pip")]
    assert len(quickstart) == 1 and quickstart[0].split(" && ")[0] == lines[0].split(" && ")[0]  # same torch


def test_the_example_environment_is_the_shipped_one():
    python = blocks("python")
    env = next(b for b in python if b.startswith("# envs/guess.py\n"))
    assert env.removeprefix("# envs/guess.py\n") == (ROOT / "envs" / "guess.py").read_text()
    registration = next(b for b in python if b.startswith("# envs/__init__.py\n")).splitlines()[1]
    assert registration in (ROOT / "envs" / "__init__.py").read_text().splitlines()
    rows = [json.loads(line) for line in (ROOT / "recipes" / "guess" / "train.jsonl").read_text().splitlines()]
    assert rows[:2] == [{"seed": 0}, {"seed": 1}]  # what the README says the file holds
    test_seeds = {json.loads(line)["seed"] for line in (ROOT / "recipes/guess/test.jsonl").read_text().splitlines()}
    assert not test_seeds & {r["seed"] for r in rows}  # held-out seeds are unseen


@pytest.mark.slow
def test_check_env_all_in_the_readme(clone):
    out = run(clone, "agentrl check-env --all")
    assert re.search(r"^\d+ passed, 0 failed", out.splitlines()[-1])


def test_readme_commands_in_order(clone):
    """Write an environment -> check it -> train it; the quickstart -> evaluate its checkpoint -> compare."""
    out = run(clone, command("agentrl check-env Guess-v0"))
    assert "ok    agentrl/Guess-v0" in out and "1 passed, 0 failed" in out
    out = run(clone, command("python train.py --config recipes/guess/config.yaml"), *SMALL)
    assert re.search(r"held-out unseen/success: \d\.\d{3} before -> \d\.\d{3} after", out), out[-2000:]

    quickstart = [line for line in blocks("bash")[0].splitlines() if line.startswith("pip install torch")]
    assert len(quickstart) == 1  # the Quickstart's own block
    quickstart = quickstart[0].split(" && ")[-1]
    assert quickstart == "python train.py --config recipes/quickstart/config.yaml"
    out = run(clone, quickstart, *SMALL)
    trained = re.search(r"held-out sums/success: (\d\.\d{3}) before -> (\d\.\d{3}) after", out)
    assert trained and "plot: " in out and (clone / "runs/quickstart/training.png").exists()

    # the same command again is refused, in one line, before anything loads; the smoke run goes elsewhere
    out = run(clone, quickstart, *SMALL, ok=False)
    assert "holds an earlier run (metrics.jsonl): pass --overwrite" in out and "Loading" not in out
    smoke = command("python train.py --config recipes/quickstart/config.yaml --output-dir runs/smoke")
    run(clone, smoke, "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--num-rollout", "1")

    out = run(clone, command("agentrl eval --model-path runs/quickstart/checkpoints"))
    summary = json.loads((clone / "runs/eval_after/summary.json").read_text())
    assert f"{summary['tasks']['sums']['success']:.3f}" == trained.group(2)  # scored as training scored it
    assert re.search(r"^sums +3x1 ", out, flags=re.M)
    run(clone, command("agentrl eval --config recipes/quickstart/config.yaml"), "--eval-max-prompts", "3")
    before = json.loads((clone / "runs/eval_before/summary.json").read_text())
    assert f"{before['tasks']['sums']['success']:.3f}" == trained.group(1)
    out = run(clone, command("agentrl eval compare"))
    assert "sums" in out
