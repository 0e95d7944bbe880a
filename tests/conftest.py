"""Fixtures shared by the test folders: SmolLM2's tokenizer (through the tiny-qwen2 alias) and its chat template.

Without a GPU, Triton kernels (the CUDA decode attention) run in Triton's CPU interpreter; the
variable must be set before they are defined, i.e. before agentrl's engine is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from agentrl.chat import ChatTemplate  # noqa: E402
from agentrl.models import load_tokenizer  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    """Docstring examples are collected from every module (--doctest-modules), but not from the
    conftest files: pytest imports those itself, and a second import by their shared basename
    ("conftest") would clash with the one of a neighbouring folder."""
    collectors = yield
    if file_path.name != "conftest.py":
        return collectors
    from _pytest.doctest import DoctestModule

    return [c for c in collectors if not isinstance(c, DoctestModule)]


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny-qwen2")


@pytest.fixture(scope="session")
def template(tokenizer):
    return ChatTemplate(tokenizer)


_REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _runs_stay_out_of_the_repository():
    """A test that trains with a recipe's config must give --output-dir and --save under its tmp_path: the
    recipes' own folders (runs/...) are the user's, and an earlier run there refuses the next one."""
    before = (_REPO / "runs").exists()
    yield
    if not before and (_REPO / "runs").exists():
        import shutil

        shutil.rmtree(_REPO / "runs")
        pytest.fail("this test wrote into the repository's runs/ folder: give --output-dir and --save under tmp_path")
