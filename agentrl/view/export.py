"""``agentrl view DIR --export report.html``: the page and its data in one self-contained HTML file.

Every answer the page could ask the server for (sources, runs, every dump's index and every
episode) is written into the file as one JSON block; the page reads it instead of fetching, and
searches the episodes in the browser. The file opens from disk, offline, in any browser.

Example::

    >>> from agentrl.view.data import Sources
    >>> export_html(Sources(["runs/quickstart"]), "report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agentrl.view.data import Sources, ViewError, to_json
from agentrl.view.server import asset

log = logging.getLogger(__name__)

EXPORT_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def export_data(sources: Sources) -> dict[str, Any]:
    """``{api path: answer}`` for every path the page can ask for (search aside). A dump or an episode that cannot be
    read is left out with a warning (the page says it is not in the export); the rest is written."""
    data: dict[str, Any] = {"api/sources.json": sources.listing()}
    for src in sources.sources:
        data[f"api/{src.id}/run.json"] = sources.run(src)
        for name in src.dumps:
            try:
                index = sources.index(src, name)
            except ViewError as e:
                log.warning("export: leaving out %s (%s)", name, e)
                continue
            data[f"api/{src.id}/{name}/index.json"] = index
            for entry in index["index"]:
                i = entry["i"]
                try:
                    data[f"api/{src.id}/{name}/{i}.json"] = sources.episode(src, name, i)
                except ViewError as e:
                    log.warning("export: leaving out %s episode %d (%s)", name, i, e)
    return data


def export_html(sources: Sources, path: str | Path) -> Path:
    """Write the page with every source's data inside; return the path."""
    page = asset("index.html")
    blob = to_json(export_data(sources)).replace("<", "\\u003c")  # nothing inside can close the script tag
    inline = {
        '<link rel="stylesheet" href="app.css">': f"<style>\n{asset('app.css')}</style>",
        '<script src="app.js"></script>': (f'<script id="agentrl-data" type="application/json">{blob}</script>\n'
                                           f"<script>\n{asset('app.js')}</script>"),
        "<!--csp-->": f'<meta http-equiv="Content-Security-Policy" content="{EXPORT_CSP}">',
    }
    for tag, replacement in inline.items():
        if tag not in page:
            raise RuntimeError(f"agentrl/view/assets/index.html lost its {tag!r}")
        page = page.replace(tag, replacement, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["EXPORT_CSP", "export_data", "export_html"]
