"""Prompt datasets: JSONL, JSON, Parquet and Hugging Face ``datasets`` sources.

Each row becomes a :class:`PromptRow`: the prompt (text or chat messages, from ``input_key``),
the label (``label_key``), metadata (``metadata_key``), and optionally a per-row environment id
(``env_key``) with reset options (``options_key``). A malformed row fails with its file and line
number, or, with ``on_bad_row="skip"``, is skipped and counted. Bytes that are not UTF-8 and JSON
nested deeper than ``MAX_JSON_DEPTH`` levels are malformed rows like any other (the depth is
measured before decoding: see :mod:`agentrl.utils.safe_json`).

Sources (``--prompt-data``):
  * ``data.jsonl`` / ``data.json`` / ``data.parquet`` / a folder of parquet files;
  * a folder written by ``datasets.Dataset.save_to_disk``;
  * ``hf:org/name[:config][@split]`` for a dataset on the Hugging Face hub (needs ``datasets``).

Example::

    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.jsonl")
    >>> with open(path, "w") as f:
    ...     _ = f.write(json.dumps({"prompt": "1+1?", "label": "2"}) + "\\n")
    >>> ds = load_prompts(path, DataConfig())
    >>> ds.rows[0].prompt, ds.rows[0].label
    ('1+1?', '2')
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from agentrl.utils.flags import Flag

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 100
"""Deepest JSON nesting of a row (chat prompts with tool calls are a few levels deep)."""


class DataError(ValueError):
    """A dataset or row that cannot be used; the message names the file and line."""


@dataclass
class DataConfig:
    """Data: how prompt rows are read."""

    FLAGS: ClassVar[dict[str, Any]] = {
        "--input-key": "input_key", "--label-key": "label_key", "--metadata-key": "metadata_key",
        "--env-key": "env_key", "--env-options-key": "options_key", "--apply-chat-template": "apply_chat_template",
        "--skip-bad-rows": Flag("--skip-bad-rows", "on_bad_row", const="skip",
                                help="skip malformed prompt rows (counted and logged) instead of failing"),
        "--prompt-data-limit": "limit",
    }

    input_key: str = "prompt"
    """Row key holding the prompt: a string or a list of chat messages (a row without it leaves the task to the
    environment's reset, e.g. a game that deals its own)."""
    label_key: str | None = "label"
    """Row key holding the reference answer, for environments that grade against one (a row without it has none)."""
    metadata_key: str | None = "metadata"
    """Row key holding a dict of extra fields passed along with the sample."""
    env_key: str | None = "env"
    """Row key naming the environment for this row (falls back to the run's ``--env``)."""
    options_key: str | None = "env_options"
    """Row key holding a dict of reset options for the row's environment."""
    apply_chat_template: bool = True
    """Render conversations with the tokenizer's chat template (off: plain text, for base models)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """``error``: stop at the first malformed row; ``skip``: skip it, count it, log it."""
    limit: int | None = None
    """Use only the first this many good rows of --prompt-data."""

    def problems(self) -> list[str]:
        if self.limit is not None and self.limit < 1:
            return [f"--prompt-data-limit must be >= 1; got {self.limit}"]
        return []


@dataclass
class PromptRow:
    index: int
    """Position among the good rows of the source (a stable id for resuming)."""
    prompt: str | list[dict[str, Any]] | None
    """None: the row has no prompt; the environment's reset makes the task."""
    label: Any = None
    env_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    """``file:line`` the row came from."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The row as read, for environments and reward functions that need other fields."""

    def reset_options(self) -> dict[str, Any]:
        """What the environment's ``reset(options=...)`` receives: the raw row fields, then the
        normalised ``prompt``/``label`` (those the row has) and ``metadata``, then the row's own env options."""
        given = {k: v for k, v in (("prompt", self.prompt), ("label", self.label)) if v is not None}
        return {**self.raw, **given, "metadata": self.metadata, **self.options}


@dataclass
class PromptDataset:
    rows: list[PromptRow]
    source: str
    skipped: list[str] = field(default_factory=list)
    """``file:line: reason`` of every skipped row."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PromptRow:
        return self.rows[i]


SKIP_HINT = " (pass on_bad_row='skip' / --skip-bad-rows to skip such rows)"
"""Appended to the error of a malformed row (training's flag; a caller without it takes the hint off)."""


def load_prompts(source: str | Path, config: DataConfig | None = None) -> PromptDataset:
    config = config or DataConfig()
    source = str(source)
    rows: list[PromptRow] = []
    skipped: list[str] = []
    for location, raw in _read_records(source):
        if config.limit is not None and len(rows) >= config.limit:
            break
        try:
            rows.append(_to_row(raw, len(rows), location, config))
        except DataError as e:
            if config.on_bad_row == "error":
                raise DataError(f"{e}{SKIP_HINT}") from None
            skipped.append(str(e))
    if skipped:
        log.warning("skipped %d malformed rows of %s; first: %s", len(skipped), source, skipped[0])
    if not rows:
        raise DataError(f"{source}: no usable rows" + (f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""))
    return PromptDataset(rows=rows, source=source, skipped=skipped)


class _BadJson:
    """Stands in for an unparseable line so the error carries its line number."""

    def __init__(self, message: str):
        self.message = message


def _to_row(raw: Any, index: int, location: str, c: DataConfig) -> PromptRow:
    if isinstance(raw, _BadJson):
        raise DataError(raw.message)
    if not isinstance(raw, dict):
        raise DataError(f"{location}: a row must be a JSON object; got {type(raw).__name__}")
    prompt = raw.get(c.input_key)
    if prompt is None:
        pass  # the environment makes the task (if it needs a prompt, its reset says so at start-up)
    elif isinstance(prompt, list):
        if not prompt:
            raise DataError(f"{location}: {c.input_key!r} is an empty list of chat messages")
        for i, m in enumerate(prompt):
            why = _message_problem(m)
            if why:
                raise DataError(f"{location}: {c.input_key}[{i}]: {why}")
    elif not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{location}: {c.input_key!r} must be a non-empty string or a list of chat messages; got {prompt!r:.80}")
    label = raw.get(c.label_key) if c.label_key else None
    metadata = _optional_dict(raw, c.metadata_key, location)
    options = _optional_dict(raw, c.options_key, location)
    env_id = raw.get(c.env_key) if c.env_key else None
    if env_id is not None and not isinstance(env_id, str):
        raise DataError(f"{location}: {c.env_key!r} must be an environment id string; got {env_id!r}")
    for where in (raw, options):  # the reset seed: the row's "seed", or its env options' (which win)
        if "seed" in where:
            where["seed"] = _seed(where["seed"], location, "seed" if where is raw else f"{c.options_key}.seed")
    return PromptRow(index=index, prompt=prompt, label=label, env_id=env_id, options=options,
                     metadata=metadata, source=location, raw=raw)


def _seed(value: Any, location: str, key: str) -> int:
    """A row's reset seed as gymnasium takes it: an integer >= 0 (an integral float, as Parquet may store one,
    becomes that integer)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{location}: {key!r} must be an integer >= 0 (the episode's reset seed); got {value!r:.80}")
    return value


def _message_problem(message: Any) -> str | None:
    from agentrl.env.spaces import message_problem  # here: reading the settings (train.py --help) imports no gymnasium

    return message_problem(message)


def _optional_dict(raw: dict, key: str | None, location: str) -> dict:
    from agentrl.utils import safe_json  # numpy: not at import

    if not key or raw.get(key) is None:
        return {}
    value = raw[key]
    if isinstance(value, str):  # parquet/HF columns often hold JSON strings
        try:
            value = safe_json.loads(value, max_depth=MAX_JSON_DEPTH)
        except ValueError as e:
            if isinstance(e, safe_json.JSONLimitError):
                raise DataError(f"{location}: {key!r}: {e}") from None
    if not isinstance(value, dict):
        raise DataError(f"{location}: {key!r} must be an object; got {type(value).__name__}")
    return value


def _read_records(source: str) -> Iterator[tuple[str, Any]]:
    if source.startswith("hf:"):
        yield from _read_hub(source[3:])
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"prompt data {source!r} not found (expected a .jsonl/.json/.parquet file, a folder, or hf:org/name)")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            yield from _read_saved_dataset(path)
            return
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(f"{path} is a folder with no .parquet/.jsonl files and is not a saved `datasets` folder")
        for f in files:
            yield from _read_records(str(f))
        return
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unknown data format {suffix!r}; use .jsonl, .json or .parquet")
    try:
        yield from readers[suffix](path)
    except OSError as e:  # unreadable, or a file that vanished
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:  # decoded line by line, so a bad byte is one bad row with its line number
        for lineno, raw in enumerate(f, 1):
            location = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark opens some files
            except UnicodeDecodeError as e:
                yield location, _BadJson(f"{location}: not UTF-8 ({e.reason}: byte 0x{raw[e.start]:02x} at column "
                                         f"{e.start + 1})")
                continue
            if line.strip():
                yield location, _parse_line(line, location)


def _parse_line(line: str, location: str) -> Any:
    from agentrl.utils import safe_json  # numpy: not at import

    try:
        return safe_json.loads(line, max_depth=MAX_JSON_DEPTH)
    except json.JSONDecodeError as e:
        return _BadJson(f"{location}: invalid JSON ({e.msg} at column {e.colno})")
    except ValueError as e:  # nested too deep, or a number Python will not convert
        return _BadJson(f"{location}: invalid JSON ({e})")


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    from agentrl.utils import safe_json  # numpy: not at import

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = safe_json.loads(text, max_depth=MAX_JSON_DEPTH)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json dataset must be a list of rows")
    for i, record in enumerate(data):
        yield f"{path}[{i}]", record


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    import pyarrow as pa

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, ValueError) as e:  # not parquet, empty, cut short
        raise DataError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None
    for i, record in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", record


def _read_saved_dataset(path: Path) -> Iterator[tuple[str, Any]]:
    datasets = _import_datasets(str(path))
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    for i, record in enumerate(ds):
        yield f"{path}:row {i}", record


def _read_hub(spec: str) -> Iterator[tuple[str, Any]]:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    datasets = _import_datasets(spec)
    ds = datasets.load_dataset(name, config or None, split=split or "train")
    for i, record in enumerate(ds):
        yield f"hf:{spec}:row {i}", record


def _import_datasets(what: str):
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"reading {what} needs the `datasets` package: pip install 'agentrl[data]'") from e
    return datasets
