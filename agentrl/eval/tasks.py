"""Evaluation tasks: a name, an environment, and where the held-out prompts come from.

On the command line::

    --task NAME=ENV_ID                    the environment's built-in held-out prompts
    --task NAME=ENV_ID:DATA_FILE          rows of a .jsonl / .json / .parquet file (or a folder)
    --task NAME=ENV_ID:SOURCE             a named source (see SOURCES): seeds, index, gsm8k-test...
    --task NAME=ENV_ID,KEY=VALUE,...      constructor arguments of the environment (values read as YAML),
                                          except the task's own keys limit, offset, max_turns,
                                          max_response_len and max_context_len

or in a YAML file (``--tasks FILE``; a relative ``data`` path is relative to the file)::

    tasks:
      - name: gsm8k
        env: agentrl/GSM8K-v0            # source gsm8k-test by default
        limit: 20
      - name: arithmetic
        env: agentrl/ReasoningGym-v0
        env_kwargs: {task: basic_arithmetic}   # split: eval (held-out seeds) by default
      - name: frozenlake
        env: agentrl/FrozenLake-v0
        env_kwargs: {random_map_size: 4}
        offset: 1000                     # seeds 1000, 1001, ...
        max_turns: 8                     # budgets of this task (default: the run's flags)
        max_response_len: 64
      - name: mine
        env: agentrl/Math-v0
        data: my_questions.jsonl
        input_key: question
        label_key: answer

Sources, for environments whose prompts are built in:

* ``seeds``: row ``i`` resets the environment with seed ``offset + i`` (any environment that
  draws its task from the seeded RNG: the toy-text games, ``Echo-v0``). Options carry the seed as
  ``{"seed": s}``, which the rollout uses as the reset seed (``Rollout.requests_for``).
* ``index``: row ``i`` resets with ``options={"index": offset + i}`` (environments holding an
  indexed list of items, e.g. ``ReasoningGym-v0``).
* ``gsm8k-test`` / ``gsm8k-sample``: the 1,319 GSM8K test questions (``envs.math.load_gsm8k``)
  or the ten shipped samples, as question/label rows.
* ``samples``: the ``samples`` of a ``MathEnv`` (``envs.math.load_samples``), as question/label rows.

Without a data file: ``GSM8K-v0`` uses ``gsm8k-test``, ``Math-v0`` its ``samples``,
``ReasoningGym-v0`` uses ``index`` with ``split="eval"`` (a dataset seed training never uses),
anything else ``seeds``. Sources without a natural length (``seeds``, ``index``) give
:data:`DEFAULT_GENERATED` prompts unless a limit is set. Held-out is the user's to choose for
``seeds``: pick an ``offset`` past the seeds the agent trained on.

Example::

    >>> spec = parse_task_arg("lake=FrozenLake-v0,random_map_size=4")
    >>> spec.name, spec.env, spec.env_kwargs
    ('lake', 'FrozenLake-v0', {'random_map_size': 4})
    >>> task = build_task(spec, limit=3)
    >>> task.env_id, [row.options for row in task.rows]
    ('agentrl/FrozenLake-v0', [{'seed': 0}, {'seed': 1}, {'seed': 2}])
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.data.prompts import SKIP_HINT, DataConfig, DataError, PromptRow, load_prompts
from agentrl.eval.runner import EvalTask
from agentrl.utils.safe_json import is_int

log = logging.getLogger(__name__)

DEFAULT_GENERATED = 100
"""Prompts made by the ``seeds`` and ``index`` sources when no limit is given."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class TaskError(ValueError):
    """A task specification that cannot be used (the message says what was expected)."""


@dataclass
class TaskSpec:
    """One evaluation task as the user wrote it."""

    name: str
    """Shown in tables and used in file names: letters, digits, ``_ . -``."""
    env: str
    """Environment id (``Name-v0`` or ``agentrl/Name-v0``)."""
    data: str | None = None
    """A data file or folder, a source name (see :data:`SOURCES`), or None for the env's default."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the environment."""
    limit: int | None = None
    """Use at most this many prompts (None: the run's ``--eval-max-prompts``, else all)."""
    offset: int = 0
    """Skip this many prompts first (for ``seeds``: the first seed)."""
    input_key: str = "prompt"
    """Data files: the row key holding the prompt."""
    label_key: str | None = "label"
    """Data files: the row key holding the reference answer."""
    max_turns: int | None = None
    """This task's turn budget (None: the run's ``--max-turns``)."""
    max_response_len: int | None = None
    """This task's tokens per assistant turn (None: the run's ``--rollout-max-response-len``)."""
    max_context_len: int | None = None
    """This task's tokens per episode (None: the run's ``--rollout-max-context-len``)."""

    def validate(self) -> None:
        """Raise :class:`TaskError` naming the first field of the wrong type or value (from a ``--task`` string or
        a YAML task file, where any value may come)."""
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise TaskError(f"task name {self.name!r} must be letters, digits, '_', '.' or '-' (it names files)")
        if not isinstance(self.env, str) or not self.env:
            raise TaskError(f"task {self.name!r} names no environment (env must be an id such as Math-v0; "
                            f"got {self.env!r})")
        for key, kinds, what in (("data", (str, type(None)), "a file, folder or source name"),
                                 ("env_kwargs", (dict,), "a mapping of the environment's arguments"),
                                 ("input_key", (str,), "a row key"), ("label_key", (str, type(None)), "a row key")):
            value = getattr(self, key)
            if not isinstance(value, kinds):
                raise TaskError(f"task {self.name!r}: {key} must be {what}; got {value!r}")
        for key, least in (("limit", 1), ("offset", 0), ("max_turns", 1), ("max_response_len", 1),
                           ("max_context_len", 1)):
            value = getattr(self, key)
            if (value is None and key != "offset") or (is_int(value) and value >= least):
                continue
            raise TaskError(f"task {self.name!r}: {key} must be an integer >= {least}; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- parsing ---------------------------------------------------------------------------------
TASK_KEYS = ("limit", "offset", "max_turns", "max_response_len", "max_context_len")
"""Keys of ``--task NAME=ENV,KEY=VALUE`` that set the task, not the environment's constructor."""


def parse_task_arg(text: str) -> TaskSpec:
    """``NAME=ENV_ID[:DATA][,KEY=VALUE...]`` -> :class:`TaskSpec` (see the module doc)."""
    import yaml

    name, eq, rest = text.partition("=")
    if not eq or not name or not rest:
        raise TaskError(f"--task must look like NAME=ENV_ID[:DATA_FILE][,KEY=VALUE...]; got {text!r}")
    head, *pairs = rest.split(",")
    env, _, data = head.partition(":")
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise TaskError(f"--task {text!r}: environment arguments must be KEY=VALUE; got {pair!r}")
        try:
            kwargs[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise TaskError(f"--task {text!r}: {key.strip()}={value!r} is not a YAML value "
                            f"({' '.join(str(e).split())})") from None
    own = {key: kwargs.pop(key) for key in TASK_KEYS if key in kwargs}
    spec = TaskSpec(name=name.strip(), env=env.strip(), data=data.strip() or None, env_kwargs=kwargs, **own)
    spec.validate()
    return spec


def load_task_file(path: str | Path) -> list[TaskSpec]:
    """Task specs from a YAML file: ``{"tasks": [...]}`` or a bare list (see the module doc)."""
    from agentrl.utils.flags import read_yaml

    path = Path(path)
    if not path.exists():
        raise TaskError(f"task file {path} not found")
    try:
        doc = read_yaml(path)
    except ValueError as e:
        raise TaskError(str(e)) from None
    entries = doc.get("tasks") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise TaskError(f"{path}: expected a list of tasks (or a 'tasks:' key holding one); got {type(doc).__name__}")
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise TaskError(f"{path}: task {i} must be a mapping; got {entry!r}")
        unknown = sorted(map(str, set(entry) - known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TaskError(f"{path}: task {i} has unknown key {unknown[0]!r}{hint}; known: {sorted(known)}")
        if "name" not in entry or "env" not in entry:
            raise TaskError(f"{path}: task {i} needs 'name' and 'env'; got keys {sorted(entry)}")
        spec = TaskSpec(**entry)
        if spec.env_kwargs is None:
            spec.env_kwargs = {}
        try:
            spec.validate()
        except TaskError as e:
            raise TaskError(f"{path}: {e}") from None
        spec.env_kwargs = dict(spec.env_kwargs)
        if spec.data and spec.data not in SOURCES and not Path(spec.data).is_absolute():
            spec.data = str(path.parent / spec.data)
        specs.append(spec)
    return specs


def check_unique(specs: list[TaskSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise TaskError(f"task name {spec.name!r} is used twice; every task needs its own name")
        seen.add(spec.name)


# -- sources ---------------------------------------------------------------------------------
Source = Callable[[TaskSpec, str, int | None], list[PromptRow]]
"""``source(spec, env_id, limit) -> rows``: the prompts of a task whose data is built in."""


def _seed_rows(spec: TaskSpec, env_id: str, limit: int | None) -> list[PromptRow]:
    n = limit or DEFAULT_GENERATED
    return [PromptRow(index=i, prompt=f"{env_id} seed {spec.offset + i}", options={"seed": spec.offset + i},
                      source=f"{env_id}:seed={spec.offset + i}") for i in range(n)]


def _index_rows(spec: TaskSpec, env_id: str, limit: int | None) -> list[PromptRow]:
    n = limit or DEFAULT_GENERATED
    size = spec.env_kwargs.get("size")
    if size is not None and spec.offset + n > int(size):
        raise TaskError(f"task {spec.name!r}: items {spec.offset}..{spec.offset + n - 1} do not fit in size={size}; "
                        f"lower the limit/offset or raise size")
    return [PromptRow(index=i, prompt=f"{env_id} item {spec.offset + i}", options={"index": spec.offset + i},
                      source=f"{env_id}:index={spec.offset + i}") for i in range(n)]


def _qa_rows(rows: list[dict[str, str]], spec: TaskSpec, where: str, limit: int | None) -> list[PromptRow]:
    chosen = rows[spec.offset: spec.offset + limit if limit else None]
    if not chosen:
        raise TaskError(f"task {spec.name!r}: {where} has {len(rows)} rows; offset {spec.offset} leaves none")
    return [PromptRow(index=spec.offset + i, prompt=r["question"], label=r["answer"],
                      source=f"{where}[{spec.offset + i}]") for i, r in enumerate(chosen)]


def _gsm8k(split: str) -> Source:
    def rows(spec: TaskSpec, env_id: str, limit: int | None) -> list[PromptRow]:
        from envs.math import load_gsm8k

        return _qa_rows(load_gsm8k(split), spec, f"gsm8k-{split}", limit)

    return rows


def _math_samples(spec: TaskSpec, env_id: str, limit: int | None) -> list[PromptRow]:
    from envs.math import load_samples

    return _qa_rows(load_samples(spec.env_kwargs.get("samples")), spec, f"{env_id} samples", limit)


SOURCES: dict[str, Source] = {
    "seeds": _seed_rows,
    "index": _index_rows,
    "gsm8k-test": _gsm8k("test"),
    "gsm8k-sample": _gsm8k("sample"),
    "samples": _math_samples,
}
"""Named prompt sources for environments whose prompts are built in (see the module doc)."""

BUILTIN_DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "agentrl/GSM8K-v0": ("gsm8k-test", {}),
    "agentrl/Math-v0": ("samples", {}),
    "agentrl/ReasoningGym-v0": ("index", {"split": "eval"}),
}
"""env id -> (source, default env kwargs) when a task gives no data; others use ``seeds``."""


# -- building ----------------------------------------------------------------------------------
def build_task(spec: TaskSpec, limit: int | None = None) -> EvalTask:
    """Resolve the environment, read or generate the rows, apply offset and limit.

    ``limit`` is the run-wide cap, used when the spec has none.
    """
    from agentrl.env.registry import resolve_id

    spec.validate()
    try:
        env_id = resolve_id(spec.env)
    except KeyError as e:
        raise TaskError(f"task {spec.name!r}: {e}") from None
    limit = spec.limit or limit
    source_name, defaults = BUILTIN_DEFAULTS.get(env_id, ("seeds", {}))
    env_kwargs = {**defaults, **spec.env_kwargs}
    if spec.data is not None and spec.data not in SOURCES:
        rows = _file_rows(spec, spec.data, limit)
    else:
        source_name = spec.data or source_name
        rows = SOURCES[source_name](dataclasses.replace(spec, env_kwargs=env_kwargs), env_id, limit)
    return EvalTask(name=spec.name, rows=rows, env_id=env_id, env_kwargs=env_kwargs, max_turns=spec.max_turns,
                    max_new_tokens_per_turn=spec.max_response_len, max_context_tokens=spec.max_context_len)


def _file_rows(spec: TaskSpec, data: str, limit: int | None) -> list[PromptRow]:
    path = Path(data)
    if not path.exists() and not data.startswith("hf:"):
        close = difflib.get_close_matches(data, list(SOURCES), n=1)
        hint = f"; did you mean the source {close[0]!r}?" if close else ""
        raise TaskError(f"task {spec.name!r}: data {data!r} is neither a file nor a source "
                        f"({', '.join(SOURCES)}){hint}")
    stop = None if limit is None else spec.offset + limit
    try:
        ds = load_prompts(data, DataConfig(input_key=spec.input_key, label_key=spec.label_key, limit=stop))
    except DataError as e:  # every row of a held-out set is scored: fix the row (eval has no --skip-bad-rows)
        raise TaskError(f"task {spec.name!r}: {str(e).removesuffix(SKIP_HINT)}") from None
    rows = ds.rows[spec.offset:]
    if not rows:
        raise TaskError(f"task {spec.name!r}: {data} has {len(ds.rows)} rows; offset {spec.offset} leaves none")
    return rows


def data_fingerprint(spec: TaskSpec) -> str | None:
    """sha256 of a task's data file (None for sources and folders): a changed file is a changed run."""
    if spec.data is None or spec.data in SOURCES:
        return None
    path = Path(spec.data)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
