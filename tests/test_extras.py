"""A missing optional dependency is one line naming the pip command, in every command that meets it."""

import sys

import pytest

from agentrl.env.cli import main as check_env_main
from agentrl.utils.extras import EXTRAS, MissingExtra, require


def test_require_names_the_extra_and_the_package():
    with pytest.raises(MissingExtra, match=r"^BM25 retrieval needs bm25s, which is not installed: "
                                           r"pip install 'agentrl\[search\]' \(or pip install bm25s\)$"):
        require("agentrl_no_such_module", extra="search", what="BM25 retrieval", package="bm25s")


def test_a_broken_installed_package_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "agentrl_broken_pkg.py").write_text("import agentrl_missing_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="agentrl_missing_dependency_of_it"):
        require("agentrl_broken_pkg", extra="search", what="x")


def test_an_installed_package_older_than_the_api_used_is_refused_before_its_import(monkeypatch):
    import importlib.metadata

    versions = {"pytest": "0.3.1"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: versions[name])
    monkeypatch.delitem(sys.modules, "json", raising=False)
    with pytest.raises(MissingExtra, match=r"^the adapter needs pytest>=0.4, and 0.3.1 is installed: "
                                           r"pip install -U 'agentrl\[test\]' \(or pip install -U 'pytest>=0.4'\)$"):
        require("json", extra="test", what="the adapter", package="pytest", min_version="0.4")
    assert "json" not in sys.modules  # refused before importing
    for ok in ("0.4", "0.4.0", "0.4.0rc1", "0.10", "1.0+cpu"):
        versions["pytest"] = ok
        assert require("json", extra="test", what="the adapter", package="pytest", min_version="0.4").dumps(1) == "1"


def test_a_minimum_version_of_a_package_that_is_not_installed_says_it_is_missing():
    with pytest.raises(MissingExtra, match="which is not installed"):
        require("agentrl_no_such_module", extra="search", what="x", package="agentrl-no-such-dist", min_version="1.0")


def test_every_extra_named_exists_in_pyproject():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)


@pytest.fixture
def no_reasoning_gym(monkeypatch):
    for name in [m for m in sys.modules if m == "reasoning_gym" or m.startswith("reasoning_gym.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # importing it raises ModuleNotFoundError


def test_check_env_of_an_env_whose_extra_is_missing_fails_in_one_line(no_reasoning_gym, capsys):
    assert check_env_main(["ReasoningGym-v0"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("FAIL  agentrl/ReasoningGym-v0: ReasoningGym-v0 needs reasoning-gym, which is not installed: "
                      "pip install 'agentrl[reasoning]' (or pip install reasoning-gym)")


def test_check_env_all_skips_what_this_install_lacks(no_reasoning_gym, capsys, monkeypatch):
    import agentrl.env.cli as cli

    monkeypatch.setattr(cli, "registered_ids", lambda: ["agentrl/Echo-v0", "agentrl/ReasoningGym-v0"])
    assert check_env_main(["--all"]) == 0
    out = capsys.readouterr().out
    assert "skip  agentrl/ReasoningGym-v0: ReasoningGym-v0 needs reasoning-gym" in out
    assert out.rstrip().endswith("1 passed, 0 failed, 1 skipped (optional dependencies not installed)")


def test_train_with_a_missing_extra_is_one_line_and_exit_2(no_reasoning_gym, tmp_path, capsys):
    from agentrl.train_cli import main

    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "x", "label": "y"}\n')
    code = main(["--model-path", "tiny-qwen2", "--env", "agentrl/ReasoningGym-v0", "--prompt-data", str(data),
                 "--num-rollout", "1", "--rollout-batch-size", "1", "--n-samples-per-prompt", "2",
                 "--output-dir", str(tmp_path / "run"), "--eval-interval", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("pip install 'agentrl[reasoning]' (or pip install reasoning-gym)"), err
    assert "Traceback" not in "\n".join(err)
