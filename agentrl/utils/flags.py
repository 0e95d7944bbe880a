"""Command lines from typed dataclasses: one generator for every agentrl command.

A settings class names its own flags in a ``FLAGS`` class attribute (``{"--lr": "lr"}``); a class that
holds others as fields composes theirs under the field's path (``train.lr``). Each flag's help text is
the docstring under the field it sets, its type the field's annotation: ``Literal[...]`` gives the
choices, ``bool`` a ``--x/--no-x`` pair, ``list`` several values, ``dict`` a JSON object, ``int | None``
an integer or ``none``. Fields marked ``field(metadata={"derived": True})`` are computed, never set.
Old spellings are kept as aliases (``Flag(..., aliases=("--out",))``): they work, with a one-line
deprecation notice.

:class:`FlagTable` builds the parser, reads a ``--config`` YAML file of ``{flag-name: value}`` (flags on
the command line win; a key given twice, a value of the wrong shape and a number that is not finite are
problems, on the command line too), writes the flag view back (:meth:`FlagTable.to_dict`), and lists fields no
flag reaches (a test keeps that list empty).

Example (a settings class of agentrl's, alone)::

    >>> from agentrl.checkpoint import CheckpointConfig
    >>> table = FlagTable(CheckpointConfig)
    >>> cfg, given, problems = table.parse(["--save", "ckpt", "--save-interval", "5"])
    >>> cfg.save, cfg.save_interval, sorted(given), problems
    ('ckpt', 5, ['save', 'save_interval'], [])
    >>> table.to_dict(cfg)
    {'save': 'ckpt', 'save-interval': 5, 'load': None}
    >>> table.parse(["--save-interval", "often"])[2]
    ["--save-interval: expected an integer, got 'often'"]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


NO_CONST: Any = object()
"""The default of :attr:`Flag.const`: the flag takes a value."""


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its name, the dotted path of the field it sets, and old spellings."""

    name: str
    path: str
    aliases: tuple[str, ...] = ()
    """Deprecated spellings: accepted with a notice naming :attr:`name`."""
    metavar: str | None = None
    const: Any = NO_CONST
    """A flag that takes no value and stores this (e.g. ``--skip-bad-rows`` -> ``"skip"``)."""
    help: str | None = None
    """Help text when the field's docstring does not say it (e.g. for a ``const`` flag)."""


class FlagTable:
    """The flags of a settings class and of every settings class among its fields (see the module doc)."""

    def __init__(self, root: type, *, positional: tuple[str, ...] = (), aliases: dict[str, tuple[str, ...]] | None = None):
        self.root = root
        self.flags: list[Flag] = [dataclasses.replace(f, aliases=f.aliases + (aliases or {}).get(f.name, ()))
                                  for f in collect(root)]
        self.positional = positional
        """Paths of fields given as positional arguments (``agentrl view RUN_DIR``)."""
        names = [n for f in self.flags for n in (f.name, *f.aliases)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"flags defined twice: {dupes}")
        self.by_name = {n: f for f in self.flags for n in (f.name, *f.aliases)}

    # -- the parser -------------------------------------------------------------------------
    def parser(self, prog: str, description: str, *, config_file: bool = True,
               sections: dict[str, str] | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
        """An argparse parser whose options default to "not given" (so the given ones are known)."""
        positional = " ".join(path.split(".")[-1].upper() for path in self.positional)
        config = " [--config FILE.yaml]" if config_file and "--config" not in self.by_name else ""
        usage = f"%(prog)s{' ' + positional if positional else ''}{config} [options]"
        p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, usage=usage,
                                    argument_default=argparse.SUPPRESS,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        for path in self.positional:
            owner, name = self.owner(path)
            p.add_argument(path, metavar=name.upper(), help=field_docs(owner).get(name, ""))
        config_file = config_file and "--config" not in self.by_name
        if config_file:
            p.add_argument("--config", metavar="FILE.yaml",
                           help="a YAML file of flag values (keys: flag names); flags given here override it")
        groups: dict[str | None, Any] = {}
        defaults = self.root()
        for flag in self.flags:
            heading = (sections or {}).get(flag.path.rpartition(".")[0]) or self._section(flag.path)
            group = groups.get(heading) or groups.setdefault(heading, p.add_argument_group(heading) if heading else p)
            self._add(group, flag, get(defaults, flag.path))
        return p

    def _section(self, path: str) -> str | None:
        parent = path.rpartition(".")[0]
        if not parent:
            return None
        owner, name = self.owner(path)
        return (owner.__doc__ or parent).strip().splitlines()[0].rstrip(".")

    def _add(self, group: Any, flag: Flag, default: Any) -> None:
        self._add_one(group, flag, [flag.name], default)
        if flag.aliases:  # old spellings: accepted, not listed
            self._add_one(group, flag, list(flag.aliases), default, hidden=True)

    def _add_one(self, group: Any, flag: Flag, names: list[str], default: Any, hidden: bool = False) -> None:
        owner, name = self.owner(flag.path)
        doc = (flag.help or field_docs(owner).get(name) or "").replace("%", "%%")
        if flag.aliases:
            doc += f" (formerly {', '.join(flag.aliases)})"
        kind, choices = field_type(owner, name)
        shown = "" if "default" in doc.lower() else f" (default: {_shown(default)})"

        def text(extra: str) -> str:
            return argparse.SUPPRESS if hidden else doc + extra

        if flag.const is not NO_CONST:
            group.add_argument(*names, dest=flag.path, action="store_const", const=flag.const, help=text(""))
        elif kind is bool:
            group.add_argument(*names, dest=flag.path, action=argparse.BooleanOptionalAction,
                               help=text(shown))
        elif kind is dict:
            group.add_argument(*names, dest=flag.path, metavar=flag.metavar or "JSON", help=text(shown))
        elif kind is list:
            group.add_argument(*names, dest=flag.path, action="extend", nargs="+", metavar=flag.metavar or name.upper(),
                               help=text("" if "repeatable" in doc else " (repeatable)"))
        else:
            metavar = flag.metavar or ("{" + ",".join(map(str, choices)) + "}" if choices else _METAVARS.get(kind, "V"))
            group.add_argument(*names, dest=flag.path, metavar=metavar, help=text(shown))

    # -- parsing ----------------------------------------------------------------------------
    def parse(self, argv: list[str], *, prog: str = "agentrl", description: str = "",
              config_file: bool = True) -> tuple[Any, set[str], list[str]]:
        """``(settings, paths given on the command line, problems)``; a ``--config`` file applies first.

        argparse exits (status 2) for an unknown flag or a missing value, as usual; a value that does not fit
        its field (a bad number or choice), on the command line or in the file, is a problem in the list, so
        every one of them can be reported at once.
        """
        parser = self.parser(prog, description, config_file=config_file)
        ns = vars(parser.parse_args(self._attach_negative_numbers(argv)))
        self._notice_aliases(argv, prog)
        cfg = self.root()
        problems: list[str] = []
        source = ns.pop("config", None) if config_file and "--config" not in self.by_name else None
        if source is not None:
            problems += self.apply_file(cfg, source)
        by_path = {f.path: f for f in self.flags}
        for path, value in ns.items():
            flag = by_path.get(path)
            try:
                set_path(cfg, path, value if flag is None else self.from_text(flag, value))
            except (TypeError, ValueError) as e:
                problems.append(f"{flag.name if flag else path}: {e}")
        return cfg, set(ns), problems

    def _attach_negative_numbers(self, argv: list[str]) -> list[str]:
        """``--flag -1e-3`` as ``--flag=-1e-3`` for a number flag: argparse takes ``-1e-3`` (unlike ``-1``) for an
        option."""
        out: list[str] = []
        i = 0
        while i < len(argv):
            arg, value = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
            flag = self.by_name.get(arg)
            if flag is not None and flag.const is NO_CONST and value.startswith("-") and _is_number(value) \
                    and field_type(*self.owner(flag.path))[0] in (int, float):
                out.append(f"{arg}={value}")
                i += 2
                continue
            out.append(arg)
            i += 1
        return out

    def from_text(self, flag: Flag, value: Any) -> Any:
        """A command-line value (text, or what a switch stored) converted to the field's type."""
        if not isinstance(value, str) or flag.const is not NO_CONST:  # a switch, a constant, or a list of texts
            return value
        owner, name = self.owner(flag.path)
        kind, choices = field_type(owner, name)
        if kind is dict:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"expected a JSON object, e.g. '{{\"k\": 1}}': {e}") from None
            return self.coerce(flag, parsed)
        if value.lower() in ("none", "null") and not choices and (kind is not str or field_optional(owner, name)):
            return None  # an optional setting a config file gave is switched off from the command line
        if kind in (int, float) and not choices:
            try:
                number = kind(value)
            except ValueError:
                raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
            return _finite(number)
        return self.coerce(flag, value)

    def _notice_aliases(self, argv: list[str], prog: str) -> None:
        for arg in argv:
            name = arg.split("=")[0]
            flag = self.by_name.get(name)
            if flag is not None and name != flag.name:
                print(f"{prog}: {name} is deprecated and will be removed; use {flag.name}", file=sys.stderr)

    def apply_file(self, cfg: Any, path: str | Path) -> list[str]:
        """Apply a YAML (or JSON) file of ``{flag-name: value}``; return the problems found."""
        try:
            data = read_yaml(path)
        except ValueError as e:
            return [f"--config {e}"]
        data = {} if data is None else data
        if not isinstance(data, dict):
            return [f"--config {path}: expected a mapping of flag names to values"]
        return self.apply_mapping(cfg, data, f"--config {path}")

    def apply_mapping(self, cfg: Any, data: dict[str, Any], source: str) -> list[str]:
        """Apply ``{flag-name: value}`` (dashes or underscores; old spellings too); return the problems."""
        problems = []
        seen: dict[str, Any] = {}  # flag path -> the key that set it
        for key, value in data.items():
            name = "--" + str(key).replace("_", "-")
            flag = self.by_name.get(name)
            if flag is None:
                problems.append(f"{source}: unknown key {key!r}{hint(name, self.by_name)}")
                continue
            if flag.path in seen:  # rollout-batch-size and rollout_batch_size, or a name and its old spelling
                problems.append(f"{source}: {key!r} and {seen[flag.path]!r} both set {flag.name}: keep one")
                continue
            seen[flag.path] = key
            try:
                set_path(cfg, flag.path, self.coerce(flag, value))
            except (TypeError, ValueError) as e:
                problems.append(f"{source}: {key}: {e}")
        return problems

    def coerce(self, flag: Flag, value: Any) -> Any:
        """A value read from a file, checked and converted to the field's type."""
        owner, name = self.owner(flag.path)
        kind, choices = field_type(owner, name)
        if flag.const is not NO_CONST:
            if not isinstance(value, bool):
                raise TypeError(f"expected true or false, got {value!r}")
            return flag.const if value else get(self.root(), flag.path)
        if value is None:
            return None
        if kind is list:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            item_kind = list_item_type(owner, name)  # list[Any] (curriculum levels) takes any value
            return items if item_kind is None else [_scalar(item_kind, v, f"item {i}: ") for i, v in enumerate(items)]
        if kind is dict:
            if not isinstance(value, dict):
                raise TypeError(f"expected a mapping, got {value!r}")
            return value
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"expected true or false, got {value!r}")
            return value
        if choices:
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(map(str, choices))}; got {value!r}{hint(value, choices)}")
            return value
        return _scalar(kind, value)

    # -- views -------------------------------------------------------------------------------
    def to_dict(self, cfg: Any) -> dict[str, Any]:
        """``{flag-name: value}`` of every flag (loadable again with ``--config``)."""
        out: dict[str, Any] = {}
        for flag in self.flags:
            value = get(cfg, flag.path)
            if flag.const is not NO_CONST:
                value = value == flag.const
            out[flag.name[2:]] = value
        return out

    def unreachable(self) -> list[str]:
        """Paths of settable fields that no flag sets (a test keeps this empty)."""
        reached = {f.path for f in self.flags} | set(self.positional)
        inside = {path.rsplit(".", 1)[0] for path in reached if "." in path}  # e.g. rollout.sampling.temperature
        return [p for p in settable_paths(self.root) if p not in reached and p not in inside]

    def owner(self, path: str) -> tuple[type, str]:
        return owner_of(self.root, path)


def blank_path(flag: str, value: str | None, optional: bool = True) -> str | None:
    """The problem with a path setting given as ``''`` (the file system reads it as the current folder, which nobody
    means), or None."""
    if value is None or value.strip():
        return None
    return f"{flag} is an empty path; give one" + (f" (or `{flag} none` to leave it out)" if optional else "")


def read_yaml(path: str | Path) -> Any:
    """The value of a YAML (or JSON) file; a :class:`ValueError` of one line naming the file for a folder, a missing
    or unreadable file, bytes that are not UTF-8 (a byte-order mark is fine), invalid YAML, or a key given twice."""
    import yaml

    file = Path(path).expanduser()
    if file.is_dir():
        raise ValueError(f"{path}: is a folder; expected a YAML file")
    if not file.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as e:  # its message names the line and column
        raise ValueError(f"{path}: not valid YAML: " + " ".join(str(e).split())) from None


# -- composition ---------------------------------------------------------------------------------
def collect(cls: type, prefix: str = "") -> Iterator[Flag]:
    """The flags of ``cls`` (its ``FLAGS``) and of its settings-class fields, with full paths."""
    own: dict[str, Any] = getattr(cls, "FLAGS", {})
    for name, target in own.items():
        flag = target if isinstance(target, Flag) else Flag(name, target)
        yield dataclasses.replace(flag, name=name, path=prefix + flag.path)
    for f in dataclasses.fields(cls):
        sub = _settings_class(cls, f.name)
        if sub is not None:
            yield from collect(sub, prefix + f.name + ".")


def settable_paths(cls: type, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every field a user may set (nested settings classes expanded, derived ones left out)."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("derived"):
            continue
        sub = _settings_class(cls, f.name)
        if sub is not None:
            yield from settable_paths(sub, prefix + f.name + ".")
        else:
            yield prefix + f.name


def _settings_class(cls: type, name: str) -> type | None:
    hint_ = resolved_hints(cls)[name]
    return hint_ if isinstance(hint_, type) and dataclasses.is_dataclass(hint_) and hasattr(hint_, "FLAGS") else None


def owner_of(root: type, path: str) -> tuple[type, str]:
    parts = path.split(".")
    cls = root
    for part in parts[:-1]:
        cls = resolved_hints(cls)[part]
    return cls, parts[-1]


def get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(obj: Any, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, name, value)


# -- types and docs ------------------------------------------------------------------------------
@functools.cache
def resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> tuple[type, tuple[Any, ...]]:
    """``(kind, choices)`` of a field: ``int | None`` -> ``(int, ())``, ``Literal["a", "b"]`` -> ``(str, ("a", "b"))``."""
    hint_ = resolved_hints(cls)[name]
    args = [a for a in typing.get_args(hint_) if a is not type(None)]
    if typing.get_origin(hint_) in (typing.Union, types.UnionType) and args:
        hint_ = args[0] if len(args) == 1 else hint_
    origin = typing.get_origin(hint_)
    if origin is typing.Literal:
        choices = typing.get_args(hint_)
        return type(choices[0]), choices
    if origin in (list, tuple, set, frozenset):
        return list, ()
    if origin is dict:
        return dict, ()
    return (hint_, ()) if isinstance(hint_, type) else (str, ())


def list_item_type(cls: type, name: str) -> type | None:
    """The item type of a ``list[...]`` field (``list[str]`` -> ``str``); None for ``list[Any]``."""
    hint_ = resolved_hints(cls)[name]
    for candidate in (hint_, *typing.get_args(hint_)):  # list[str] | None -> list[str]
        if typing.get_origin(candidate) in (list, tuple, set, frozenset):
            args = typing.get_args(candidate)
            return args[0] if args and args[0] in (str, int, float) else None
    return None


def _scalar(kind: type, value: Any, where: str = "") -> Any:
    """A value from a file as ``kind`` (str, int, float, or another type that converts it), or an error saying
    what came instead."""
    import datetime

    if isinstance(value, (dict, list, tuple, set, bytes, bool)):
        what = "true or false" if isinstance(value, bool) else f"a {type(value).__name__}"
        expected = {int: "an integer", float: "a number"}.get(kind, "a string")
        raise TypeError(f"{where}expected {expected}, got {what}: {value!r:.80}")
    if kind is str:
        if not isinstance(value, (str, int, float, datetime.date)):
            raise TypeError(f"{where}expected a string, got {value!r:.80}")
        return str(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{where}expected an integer, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}expected {'an integer' if kind is int else 'a number'}, got {value!r:.80}") from None
    return _finite(number) if kind in (int, float) else number


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _finite(number: Any) -> Any:
    """``number`` unless it is NaN or infinite, which no setting takes."""
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {number}")
    return number


def field_optional(cls: type, name: str) -> bool:
    """Whether a field may be None (``str | None``): its flag then takes ``none`` for None.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     a: str | None = None
    ...     b: str = ""
    >>> field_optional(C, "a"), field_optional(C, "b")
    (True, False)
    """
    return type(None) in typing.get_args(resolved_hints(cls)[name])


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each dataclass field (its doc), read from the source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    node = ast.parse(source).body[0]
    body = node.body if isinstance(node, ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def hint(value: Any, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@functools.cache
def _unique_key_loader() -> type:
    """yaml's safe loader, refusing a mapping that names one key twice (YAML itself keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue  # yaml's own construct_mapping says so
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (the second is at line {key_node.start_mark.line + 1})",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


_METAVARS: dict[type, str] = {int: "N", float: "X", str: "STR"}


def _shown(default: Any) -> str:
    return "none" if default is None else str(default)
