"""``agentrl new-env NAME [--tools] [--async]``: a documented environment skeleton that passes its own tests.

Run in the root of an agentrl checkout (where ``envs/`` and ``recipes/`` are). For ``NAME`` = ``demo``
it writes:

* ``envs/demo.py``: ``DemoEnv``, a small working task (count a letter in a word, answer in
  ``<answer></answer>`` tags, one more try after a wrong answer) with an ``oracle``; ``--tools`` adds a
  ``spell`` tool called in hermes ``<tool_call>`` format; ``--async`` writes ``areset``/``astep``
  (``--tools`` does too: tool calls are awaited);
* a ``register("Demo-v0", "envs.demo:DemoEnv", max_turns=...)`` line in ``envs/__init__.py``;
* ``tests/envs/test_demo.py``: ``check_env``, the exploit check and a scripted episode;
* ``recipes/demo/config.yaml`` with ``train.jsonl`` and ``test.jsonl`` (seeds; held-out seeds unseen).

docs/new_env.md walks from there to a trained model.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path

TASK_DOC = '''"""``agentrl/{env_id}``: count how often a letter appears in a word{tools_doc}.

Made by ``agentrl new-env``: replace the task with yours and keep the contract (docs/environments.md,
"Writing a new environment"):

* ``{reset}`` opens the episode; draw randomness from ``self.np_random`` only (seeded by the reset).
* ``{step}`` answers every reply, however malformed, with new messages or a clean end: never raise
  on model text.
* ``info`` holds only JSON values; the turn budget is the registration's ``max_turns``.
* ``oracle(seed)`` is the reference solution: ``agentrl check-env --exploits {env_id}`` checks that it
  earns full reward and that scripted cheats (empty, echoed, spammed, junk answers...) earn none.

Reward: 1.0 for the right count as the one number in ``<answer></answer>`` tags; a wrong count gets
one more try. Reset options (a prompt row's keys): ``{{"word": ..., "letter": ...}}``.
"""
'''

COMMON = '''
import re
{imports}
WORDS = ("strawberry", "banana", "bookkeeper", "mississippi", "committee", "parallel", "assessment", "balloon",
         "coffee", "letter", "raspberry", "tomorrow", "success", "address", "pepper", "cocoa")
ANSWER = re.compile(r"<answer>\\s*(\\d{{1,6}})\\s*</answer>")
MAX_READ = 10_000
"""Only the last characters of a reply are read: a megabyte of junk costs no more than a short reply."""
{tool_def}

class {cls}(TextEnv):
    """Count a letter in a word; answer in <answer></answer> tags."""
{tools_attr}
{reset_def}'''

SYNC_RESET = '''    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)  # seeds self.np_random: the row's seed picks the task'''
ASYNC_RESET = '''    async def areset(self, *, seed=None, options=None):
        self.seed_rng(seed)  # seeds self.np_random: the row's seed picks the task'''

RESET_BODY = '''
        options = options or {{}}
        self.word = str(options.get("word") or WORDS[int(self.np_random.integers(0, len(WORDS)))])
        self.letter = str(options.get("letter") or self.word[int(self.np_random.integers(0, len(self.word)))])
        self.count = self.word.count(self.letter)
        prompt = (f"How many times does the letter '{{self.letter}}' appear in the word '{{self.word}}'? "
                  "Give the number in <answer></answer> tags.{tool_hint}")
        return [{{"role": "user", "content": prompt}}], {{"word": self.word, "letter": self.letter}}
'''

SYNC_STEP = '''
    def step(self, action):
        return self.grade(action)
'''
ASYNC_STEP = '''
    async def astep(self, action):
        return self.grade(action)
'''
TOOLS_STEP = '''
    async def astep(self, action):
        calls = self.parser.parse(action)  # linear and capped: cheap on any text
        if calls:  # tool calls: run them (errors come back as messages), no reward
            results = await self.executor.execute(calls[:4])
            errors = sum(1 for r in results if r.error_kind)
            info = {{"tool_calls": len(results), "tool_errors": errors}}
            return [r.to_message() for r in results], 0.0, False, False, info
        return self.grade(action)
'''

GRADE = '''
    def grade(self, action):
        found = ANSWER.findall(action[-MAX_READ:])
        if len(found) != 1:  # no answer, or several candidates: nothing to grade
            retry = "Give exactly one number in <answer></answer> tags."
            return [{{"role": "user", "content": retry}}], 0.0, False, False, {{"valid": False}}
        if int(found[0]) == self.count:
            return [], 1.0, True, False, {{"valid": True, "correct": True}}
        retry = "That is not right. Count again, letter by letter."
        return [{{"role": "user", "content": retry}}], 0.0, False, False, {{"valid": True, "correct": False}}

    def oracle(self, seed=None):
        """The reference solution of the episode just reset."""
        return [f"<answer>{{self.count}}</answer>"]
'''

TOOL_DEF = '''

def spell(word: str) -> str:
    """Spell a word letter by letter, numbering the letters.

    Args:
        word: the word to spell.
    """
    return " ".join(f"{i}:{c}" for i, c in enumerate(word[:100], start=1))
'''

TOOLS_ATTR = '''
    tools = (spell,)

    def __init__(self):
        super().__init__()
        self.parser = HermesParser()
        self.executor = ToolExecutor(self.tools, timeout=5.0)
'''

TOOL_HINT = ' You may call the spell tool first: <tool_call>{\\"name\\": \\"spell\\", \\"arguments\\": {\\"word\\": \\"...\\"}}</tool_call>'


TEST = '''"""Tests of ``agentrl/{env_id}`` (envs/{name}.py), made by ``agentrl new-env``: keep them passing as the task grows."""

from agentrl.env import check_env, make
from agentrl.env.exploits import check_exploits
from envs.{name} import {cls}


def test_check_env():
    report = check_env(lambda: make("agentrl/{env_id}"))
    assert report.ok, report.problems


def test_no_cheat_earns_reward_and_the_oracle_earns_full_reward():
    report = check_exploits(lambda: make("agentrl/{env_id}"))
    assert report.ok, "\\n".join(report.summary())
    assert report.oracle_checked


def test_a_scripted_episode():
    env = {cls}()
    messages, info = env.reset(options={{"word": "banana", "letter": "a"}})
    assert "'a'" in messages[0]["content"] and info == {{"word": "banana", "letter": "a"}}
    assert env.step("<answer>1</answer> <answer>3</answer>")[1:3] == (0.0, False)  # two candidates: not graded
    assert env.step("It is <answer>2</answer>")[1:3] == (0.0, False)  # wrong: one more try
    assert env.step("<answer>3</answer>")[1:3] == (1.0, True)
{tool_test}'''

TOOL_TEST = '''

def test_the_spell_tool():
    env = {cls}()
    env.reset(options={{"word": "banana", "letter": "n"}})
    messages, reward, terminated, _, info = env.step(
        '<tool_call>{{"name": "spell", "arguments": {{"word": "banana"}}}}</tool_call>')
    assert messages == [{{"role": "tool", "name": "spell", "content": "1:b 2:a 3:n 4:a 5:n 6:a"}}]
    assert (reward, terminated, info["tool_errors"]) == (0.0, False, 0)
    assert env.step("<answer>2</answer>")[1:3] == (1.0, True)
'''

CONFIG = '''# agentrl/{env_id} (envs/{name}.py), made by `agentrl new-env`: count a letter in a word.
# Rows are seeds (each picks a word and a letter); held-out rows use seeds training never sees.
#   python train.py --config recipes/{name}/config.yaml
model-path: smollm2-135m-instruct
env: agentrl/{env_id}
prompt-data: recipes/{name}/train.jsonl
eval-prompt-data: [unseen, recipes/{name}/test.jsonl]
eval-interval: 10
eval-max-prompts: 32
num-rollout: 20
rollout-batch-size: 4
n-samples-per-prompt: 8
rollout-max-response-len: {response_len}
rollout-max-context-len: {context_len}
rollout-temperature: 1.0
advantage-estimator: grpo
lr: 3.0e-5
lr-warmup-steps: 2
clip-grad: 1.0
gradient-checkpointing: true
output-dir: runs/{name}
save: runs/{name}/checkpoints
seed: 0
'''


def names(raw: str) -> tuple[str, str, str]:
    """``(module, ClassName, Id-v0)`` for a name such as ``demo`` or ``letter-count``."""
    module = re.sub(r"[^0-9a-zA-Z]+", "_", raw).strip("_").lower()
    if not module or not module[0].isalpha():
        raise ValueError(f"NAME must start with a letter and hold letters, digits, '-' or '_'; got {raw!r}")
    if keyword.iskeyword(module):
        raise ValueError(f"NAME {raw!r} would make the module envs/{module}.py, and {module!r} is a Python keyword "
                         f"(`from envs.{module} import ...` cannot be written); pick another name")
    camel = "".join(part.capitalize() for part in module.split("_"))
    return module, f"{camel}Env", f"{camel}-v0"


def env_source(module: str, cls: str, env_id: str, *, tools: bool, is_async: bool) -> str:
    is_async = is_async or tools
    imports = ("\nfrom agentrl.env import TextEnv\nfrom agentrl.tool import HermesParser, ToolExecutor\n" if tools
               else "\nfrom agentrl.env import TextEnv\n")
    doc = TASK_DOC.format(env_id=env_id, tools_doc=", with a spell tool" if tools else "",
                          reset="areset(seed, options)" if is_async else "reset(seed, options)",
                          step="astep(text)" if is_async else "step(text)")
    head = COMMON.format(imports=imports, tool_def=TOOL_DEF if tools else "", cls=cls,
                         tools_attr=TOOLS_ATTR if tools else "", reset_def=ASYNC_RESET if is_async else SYNC_RESET)
    body = RESET_BODY.format(tool_hint=TOOL_HINT if tools else "")
    step = TOOLS_STEP.format() if tools else (ASYNC_STEP if is_async else SYNC_STEP)
    return doc + head + body + step + GRADE.format()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentrl new-env",
        description="Write an environment skeleton that passes its own tests: envs/NAME.py, its register() line "
        "in envs/__init__.py, tests/envs/test_NAME.py (check_env, the exploit check, a scripted episode) and "
        "recipes/NAME/ (config.yaml, train.jsonl, test.jsonl). Run in the root of an agentrl checkout; "
        "docs/new_env.md walks from there to a trained model.")
    p.add_argument("name", metavar="NAME", help="the environment's name, e.g. demo (-> envs/demo.py, agentrl/Demo-v0)")
    p.add_argument("--tools", action="store_true", help="give the environment a tool, called in hermes <tool_call> format")
    p.add_argument("--async", dest="is_async", action="store_true",
                   help="write the async pair areset/astep (for environments that wait on I/O)")
    p.add_argument("--root", default=".", help="the checkout's root (default: the current folder)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        module, cls, env_id = names(args.name)
    except ValueError as e:
        print(f"agentrl new-env: {e}", file=sys.stderr)
        return 2
    root = Path(args.root)
    registry = root / "envs" / "__init__.py"
    if not registry.exists() or not (root / "recipes").is_dir():
        print(f"agentrl new-env: {root.resolve()} has no envs/__init__.py and recipes/: run it in the root of an "
              "agentrl checkout (or pass --root)", file=sys.stderr)
        return 2
    if (root / "envs" / module).is_dir():
        print(f"agentrl new-env: {root / 'envs' / module} is a folder, so envs.{module} would not be the new "
              "module; pick another name", file=sys.stderr)
        return 2
    line = f'register("{env_id}", "envs.{module}:{cls}", max_turns={4 if args.tools else 2})'
    files = {
        root / "envs" / f"{module}.py": env_source(module, cls, env_id, tools=args.tools, is_async=args.is_async),
        root / "tests" / "envs" / f"test_{module}.py": TEST.format(
            env_id=env_id, name=module, cls=cls, tool_test=TOOL_TEST.format(cls=cls) if args.tools else ""),
        root / "recipes" / module / "config.yaml": CONFIG.format(
            env_id=env_id, name=module, response_len=64 if args.tools else 24, context_len=768 if args.tools else 256),
        root / "recipes" / module / "train.jsonl": "".join(f'{{"seed": {s}}}\n' for s in range(64)),
        root / "recipes" / module / "test.jsonl": "".join(f'{{"seed": {s}}}\n' for s in range(100_000, 100_032)),
    }
    existing = [str(p) for p in files if p.exists()]
    registered = f'"{env_id}"' in registry.read_text()
    if (existing or registered) and not args.force:
        what = existing + ([f"{env_id} in {registry}"] if registered else [])
        print(f"agentrl new-env: already there: {', '.join(what)} (pass --force to overwrite)", file=sys.stderr)
        return 1
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if not registered:
        comment = f"# {module}: made by `agentrl new-env` (see envs/{module}.py, recipes/{module}/)"
        with registry.open("a") as f:
            f.write(f"{comment}\n{line}\n")
        print(f"registered agentrl/{env_id} in {registry}")
    print(f"next: python -m pytest -q tests/envs/test_{module}.py && agentrl check-env --exploits {env_id} && "
          f"python train.py --config recipes/{module}/config.yaml")
    return 0
