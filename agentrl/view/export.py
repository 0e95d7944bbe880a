"""``agentrl view DIR --export report.html``: the page and its data in one self-contained HTML file.

Every answer the page could ask the server for (sources, runs, every dump's index and every
episode) is written into the file as one JSON block; the page reads it instead of fetching, and
searches the episodes in the browser. The file opens from disk, offline, in any browser.

The file is written as it is read, one answer at a time (memory stays that of one dump, whatever the
run's size), and it holds at most ``max_chars`` characters of data: a browser cannot parse a bigger
block (V8's strings end at about 2**29 characters). Every source, run and list is always written;
episodes past the limit are left out with a warning, and the page says so when one is opened.

Example::

    >>> from agentrl.view.data import Sources
    >>> export_html(Sources(["runs/quickstart"]), "report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentrl.view.data import Sources, ViewError, to_json
from agentrl.view.server import asset

log = logging.getLogger(__name__)

EXPORT_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
MAX_CHARS = 400_000_000
"""The most characters of data an export holds (a browser's JSON.parse fails a little past 500 million)."""


def export_data(sources: Sources) -> dict[str, Any]:
    """``{api path: answer}`` for every path the page can ask for (search aside). A dump or an episode that cannot be
    read is left out with a warning (the page says it is not in the export); the rest is written."""
    data: dict[str, Any] = {}
    for key, answer in _answers(sources):
        value = answer()
        if value is not None:
            data[key] = value
    return data


def _answers(sources: Sources) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(path, read it)`` for every answer: the listing, each source's run and every dump's index first, then the
    episodes (read only when asked: an export that is full skips the rest without reading them). An episode that
    cannot be read answers None, with a warning."""
    indexes = []
    yield "api/sources.json", _given(sources.listing())
    for src in sources.sources:
        yield f"api/{src.id}/run.json", _given(sources.run(src))
        for name in src.dumps:
            try:
                index = sources.index(src, name)
            except ViewError as e:
                log.warning("export: leaving out %s (%s)", name, e)
                continue
            indexes.append((src, name, index))
            yield f"api/{src.id}/{name}/index.json", _given(index)
    for src, name, index in indexes:
        for entry in index["index"]:
            yield f"api/{src.id}/{name}/{entry['i']}.json", functools.partial(_episode, sources, src, name, entry["i"])


def _given(value: Any) -> Callable[[], Any]:
    return lambda: value


def _episode(sources: Sources, src: Any, name: str, i: int) -> dict[str, Any] | None:
    try:
        return sources.episode(src, name, i)
    except ViewError as e:
        log.warning("export: leaving out %s episode %d (%s)", name, i, e)
        return None


def export_html(sources: Sources, path: str | Path, *, max_chars: int = MAX_CHARS) -> Path:
    """Write the page with every source's data inside (at most ``max_chars`` of it; see the module doc); return
    the path. The file appears whole or not at all."""
    page = asset("index.html")
    inline = {
        '<link rel="stylesheet" href="app.css">': f"<style>\n{asset('app.css')}</style>",
        "<!--csp-->": f'<meta http-equiv="Content-Security-Policy" content="{EXPORT_CSP}">',
    }
    for tag, replacement in inline.items():
        if tag not in page:
            raise RuntimeError(f"agentrl/view/assets/index.html lost its {tag!r}")
        page = page.replace(tag, replacement, 1)
    script = '<script src="app.js"></script>'
    if script not in page:
        raise RuntimeError(f"agentrl/view/assets/index.html lost its {script!r}")
    before, after = page.split(script, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(before + '<script id="agentrl-data" type="application/json">{')
            written, left_out = 1, 0
            for key, answer in _answers(sources):
                episode = key.count("/") == 3 and not key.endswith("/index.json")
                if left_out and episode:  # full: the episodes after it are left out unread
                    left_out += 1
                    continue
                value = answer()
                if value is None:
                    continue
                # "<" escaped: nothing inside can close the script tag or open a comment
                item = ((", " if written > 1 else "") + json.dumps(key) + ": " + to_json(value)).replace("<", "\\u003c")
                if episode and written + len(item) > max_chars:  # sources, runs and lists come first and always fit
                    left_out += 1
                    continue
                f.write(item)
                written += len(item)
            f.write("}</script>\n" + f"<script>\n{asset('app.js')}</script>" + after)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if left_out:
        log.warning("export: %d episodes left out: the file holds at most %s characters of data, what a browser "
                    "can read; bound the dumps (--dump-max-samples-per-rollout) or export fewer folders",
                    left_out, f"{max_chars:,}")
    return path


__all__ = ["EXPORT_CSP", "MAX_CHARS", "export_data", "export_html"]
