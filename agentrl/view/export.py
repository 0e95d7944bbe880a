"""``agentrl view DIR --export report.html``: the page and its data in one self-contained HTML file.

Every answer the page could ask the server for (sources, runs, every dump's index and every
episode) is written into the file as one JSON block; the page reads it instead of fetching, and
searches the episodes in the browser. The file opens from disk, offline, in any browser.

Example::

    >>> from agentrl.view.data import Sources
    >>> export_html(Sources(["runs/quickstart"]), "report.html")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.view.data import Sources, to_json
from agentrl.view.server import asset

EXPORT_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def export_data(sources: Sources) -> dict[str, Any]:
    """``{api path: answer}`` for every path the page can ask for (search aside)."""
    data: dict[str, Any] = {"api/sources.json": sources.listing()}
    for src in sources.sources:
        data[f"api/{src.id}/run.json"] = sources.run(src)
        for name in src.dumps:
            index = sources.index(src, name)
            data[f"api/{src.id}/{name}/index.json"] = index
            for e in index["index"]:
                data[f"api/{src.id}/{name}/{e['i']}.json"] = sources.episode(src, name, e["i"])
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
