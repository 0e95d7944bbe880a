"""Loading user hooks named on the command line: ``package.module:function`` or ``path/file.py:function``."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


class HookLoadError(ImportError):
    """A ``--custom-*-path`` that cannot be imported (the message says what was expected)."""


def load_object(spec: str, *, what: str = "hook") -> Any:
    """Import ``spec`` = ``"pkg.mod:name"`` or ``"path/to/file.py:name"`` (``name`` may be dotted).

    Example::

        >>> load_object("os.path:join")("a", "b")
        'a/b'
    """
    if ":" not in spec:
        raise HookLoadError(f"{what} {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'")
    module_part, _, attr = spec.rpartition(":")
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part).expanduser()
        if not path.exists():
            raise HookLoadError(f"{what} file {path} does not exist")
        name = f"agentrl_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise HookLoadError(f"{what} file {path} cannot be imported")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as e:
            raise HookLoadError(f"{what} module {module_part!r} not found ({e})") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            listing = f"did you mean {', '.join(map(repr, close))}?" if close else (
                f"it has {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}" if names else "it has no public names")
            raise HookLoadError(f"{what}: {module_part!r} has no attribute {attr!r}; {listing}")
        obj = getattr(obj, part)
    return obj
