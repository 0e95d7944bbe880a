"""Every command, flag and path the documentation names exists, as a new user would type it.

README.md, ``docs/*.md``, the recipes' READMEs and the comments of recipe configs show commands in
fenced blocks, indented blocks and inline code. For each ``python train.py`` / ``agentrl train|eval|
serve|retriever|view|check-env|new-env`` / ``agentrl eval compare`` command and each ``bench/``,
``recipes/`` or ``tools`` script run with flags, every ``--flag`` written must be one the command
defines, in its current spelling (an old one still works, with a notice), and ``agentrl check-env``
must be given environment ids where it takes ids. A flag named in prose must be one of ours (or of a
program the docs show beside ours), and every repository path, test id and relative link must exist.
Running the commands is left to test_readme.py and the tests of each tutorial.
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*/*.md"))]
CONFIGS = sorted((ROOT / "recipes").glob("*/*.yaml"))
FLAG = re.compile(r"(?<![\w-])--[a-z0-9]+(?:-[a-z0-9]+)*")
COMMAND = re.compile(r"(?:^|\s)(?:python (?:-m agentrl|train\.py)|agentrl)(?=\s|$)")
SCRIPT = re.compile(r"(?:^|\s)(?:python )?(?:-m )?((?:bench|tools|recipes)/[\w/]+\.py|tools\.[\w.]+)(?=\s)")


@cache
def parser(command: str) -> argparse.ArgumentParser:
    if command == "train":
        from agentrl.config import build_parser
    elif command == "eval":
        from agentrl.eval.cli import build_parser
    elif command == "serve":
        from agentrl.engine._server_run import build_parser
    elif command == "retriever":
        from tools.retriever.server import build_parser
    elif command == "view":
        from agentrl.view.cli import build_parser
    elif command == "check-env":
        from agentrl.env.cli import build_parser
    elif command == "new-env":
        from agentrl.env.new_env import build_parser
    else:
        raise AssertionError(command)
    return build_parser()


@cache
def script_flags(script: str) -> frozenset[str]:
    """The flags a bench or tools script's ``--help`` lists."""
    argv = [sys.executable, *(["-m", script] if not script.endswith(".py") else [script]), "--help"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-1000:]}"
    return frozenset(FLAG.findall(out.stdout))


def snippets(text: str) -> list[str]:
    """Command-like lines: of fenced and indented code blocks, and inline code spans."""
    text = text.replace("\\\n", " ")
    lines = []
    for block in re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.splitlines()
    lines += [m for m in re.findall(r"^(?: {4}|\t)(\S.*)$", text, flags=re.M)]
    lines += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    out = []
    for line in lines:
        line = line.strip().removeprefix("$ ")
        line = re.split(r"\s+#\s", line)[0]  # a trailing comment
        out += [part.strip() for part in re.split(r"&&|\|\||;(?=\s)", line)]
    return out


def commands(text: str) -> list[tuple[str, str]]:
    """(command, its arguments) for every agentrl/train.py invocation in ``text``."""
    found = []
    for line in snippets(text):
        m = COMMAND.search(line)
        if not m:
            continue
        words = line[m.end():].split()
        if line[m.start():m.end()].strip() == "python train.py":
            found.append(("train", " ".join(words)))
        elif words and words[0] in ("train", "eval", "serve", "retriever", "view", "check-env", "new-env"):
            name, rest = words[0], words[1:]
            if name == "eval" and rest[:1] == ["compare"]:
                name, rest = "compare", rest[1:]
            found.append((name, " ".join(rest)))
    return found


def sources() -> list[tuple[str, str]]:
    texts = [(str(doc.relative_to(ROOT)), doc.read_text()) for doc in DOCS]
    texts += [(str(c.relative_to(ROOT)), "\n".join("    " + line.lstrip("# ") for line in c.read_text().splitlines()
                                                    if line.lstrip().startswith("#"))) for c in CONFIGS]
    return texts


COMPARE_FLAGS = {"--out", "-h", "--help"}  # agentrl eval compare's own parser (agentrl/eval/compare.py)
OLD_SPELLINGS = {name: {o for o, a in parser(name)._option_string_actions.items() if a.help == argparse.SUPPRESS}
                 for name in ("train", "eval", "serve", "retriever")}
"""Aliases kept for old command lines: hidden from --help, and not what the docs should teach."""


def test_the_docs_show_commands():
    """The extraction finds the commands it is meant to check (so the tests below are not vacuous)."""
    found = {name for _, text in sources() for name, _ in commands(text)}
    assert {"train", "eval", "compare", "serve", "retriever", "view", "check-env", "new-env"} <= found


@pytest.mark.parametrize("where,text", sources(), ids=lambda x: x if len(x) < 60 else "")
def test_every_flag_a_doc_gives_a_command_exists(where, text):
    wrong = []
    for name, args in commands(text):
        known = COMPARE_FLAGS if name == "compare" else set(parser(name)._option_string_actions)
        if name == "check-env" and "--signal" in args.split():
            known |= set(parser("train")._option_string_actions)  # --signal passes training flags on
        old = OLD_SPELLINGS.get(name, set())
        name = "train" if name == "train" else f"agentrl {name}"
        wrong += [f"{name} {flag}  ({args[:80]})" for flag in FLAG.findall(args) if flag not in known]
        wrong += [f"{name} {flag}: an old spelling (it prints a deprecation notice)  ({args[:80]})"
                  for flag in FLAG.findall(args) if flag in old]
    for line in snippets(text):
        for m in SCRIPT.finditer(line):
            args = line[m.end():]
            args = args[:next((k.start() for k in (COMMAND.search(args), SCRIPT.search(args)) if k), len(args))]
            flags = FLAG.findall(args)
            if flags:
                known = script_flags(m.group(1))
                wrong += [f"{m.group(1)} {flag}" for flag in flags if flag not in known]
    assert not wrong, f"{where}: flags these commands do not define, or old spellings:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("where,text", sources(), ids=lambda x: x if len(x) < 60 else "")
def test_check_env_is_given_environment_ids(where, text):
    """``agentrl check-env`` takes ids before its options; a file given where an id goes is read as an id."""
    wrong = []
    for name, args in commands(text):
        if name != "check-env" or "[" in args:
            continue
        ns, _ = parser("check-env").parse_known_args(shlex.split(args))
        wrong += [f"check-env {args}: {i!r}" for i in ns.env_ids if not re.fullmatch(r"[\w./-]*-v\d+|ID", i)]
    assert not wrong, f"{where}: not environment ids:\n  " + "\n  ".join(wrong)


# -- paths and links -----------------------------------------------------------------------------------------
PATH = re.compile(r"(?<![\w/.:-])((?:agentrl|envs|tools|bench|recipes|tests|docs|\.ci)/[\w./-]*\w)")
ENV_ID = re.compile(r"(?:agentrl|envs)/[\w-]+-v\d+")
MADE_BY_THE_TUTORIAL = {"envs/demo.py", "tests/envs/test_demo.py", "recipes/demo/config.yaml", "recipes/demo/train.jsonl"}
NOT_PATHS = {"tools/list"}  # MCP's method name


@pytest.mark.parametrize("where,text", sources(), ids=lambda x: x if len(x) < 60 else "")
def test_every_path_a_doc_names_exists(where, text):
    """Repository paths in the text (a result that left the tree is cited as ``git show COMMIT:PATH``, which
    tests/test_bench_results.py checks) and the targets of relative Markdown links."""
    base = (ROOT / where).parent
    missing = []
    for m in PATH.finditer(text):
        path = m.group(1)
        if (ENV_ID.fullmatch(path) or path in MADE_BY_THE_TUTORIAL or path in NOT_PATHS or any(re.fullmatch(r"[A-Z_]+", part) for part in path.split("/"))  # recipes/NAME/...
                or re.search(r"\b[0-9a-f]{7,40}:$", text[max(0, m.start() - 41):m.start()])):
            continue
        if not (ROOT / path).exists():
            missing.append(path)
    for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", text):  # a test named by its node id
        if (ROOT / path).is_file() and not re.search(rf"^\s*(?:async )?def {name}\(", (ROOT / path).read_text(), re.M):
            missing.append(f"{path}::{name}")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", target) and not (base / target).exists():
            missing.append(f"link {target}")
    assert not missing, f"{where}: no such file or folder:\n  " + "\n  ".join(sorted(set(missing)))


# flags of other programs the docs show beside ours: pip, ray, torchrun, huggingface-cli, SGLang's server and
# router, setpriv (the python sandbox's privilege drop)
OTHER_PROGRAMS = {"--extra-index-url", "--no-deps", "--head", "--address", "--nproc-per-node", "--local-dir",
                  "--repo-type", "--tp-size", "--mem-fraction-static", "--policy", "--worker-urls", "--clear-groups",
                  "--regid", "--reuid"}


@cache
def every_flag_we_define() -> frozenset[str]:
    flags = {f for name in ("train", "eval", "serve", "retriever", "view", "check-env", "new-env")
             for f in parser(name)._option_string_actions} | COMPARE_FLAGS
    for script in [*ROOT.glob("bench/*.py"), *ROOT.glob("recipes/*/*.py"), *ROOT.glob("tools/**/*.py")]:
        flags |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text()))
    return frozenset(flags)


@pytest.mark.parametrize("where,text", sources(), ids=lambda x: x if len(x) < 60 else "")
def test_every_flag_a_doc_names_exists_somewhere(where, text):
    """A ``--flag`` in prose or a table (not in a command line) is one of ours (``--sglang-*`` pass through to
    SGLang) or another program's the docs show."""
    named = {f for span in snippets(text) for f in FLAG.findall(span)}
    unknown = sorted(f for f in named - every_flag_we_define() - OTHER_PROGRAMS if not (f + "-").startswith("--sglang-"))
    assert not unknown, f"{where}: flags no command defines: {unknown}"
