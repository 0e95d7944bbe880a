"""The viewer's page in a real headless browser: Debian's Chromium driven by Playwright.

Needs ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the ``playwright``
package (the test extra); Playwright's own browser download is never used. Without them these
tests skip, saying why. Screenshots go to each test's tmp dir."""

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from agentrl.obs.dump import read_dump
from agentrl.view.data import Sources
from agentrl.view.server import make_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed (pip install -e '.[test]')")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium; needs root)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                       viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture(scope="module")
def served(recorded_run):
    server = make_server(Sources([recorded_run]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url
    server.shutdown()
    server.server_close()


def _page(browser):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page._errors = errors
    return page


def _ready(page):
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.inner_text("#msg") == "", page.inner_text("#msg")
    assert not page._errors, page._errors


def _detail(page, pane="#pane-a"):
    rows = page.query_selector_all(f"{pane} table.tokdetail tr[data-field]")
    return {r.get_attribute("data-field"): r.query_selector_all("td")[1].inner_text() for r in rows}


def _episodes(recorded_run):
    out = {}
    for name in ("rollout_000000", "rollout_000001"):
        for i, e in enumerate(read_dump(recorded_run / "rollout_data" / f"{name}.jsonl.gz").episodes):
            out[f"0:{name}:{i}"] = e
    return out


def _check_token(page, episode, k, pane="#pane-a"):
    """Click token k of the pane's episode; the numbers shown are the dump's, exactly."""
    page.click(f"{pane} .tok[data-pos='{k}']")
    shown = _detail(page, pane)
    s, x = episode.sample, episode.extras
    j = k - len(s.prompt_ids)
    assert shown["loss_mask"] == str(s.loss_mask[j])
    assert float(shown["engine_logprob"]) == s.rollout_logprobs[j]
    if "trainer_logprobs" in x:
        assert float(shown["trainer_logprob"]) == x["trainer_logprobs"][j]
        assert float(shown["difference"]) == x["trainer_logprobs"][j] - s.rollout_logprobs[j]
        assert float(shown["entropy"]) == x["entropy"][j]
        assert float(shown["advantage"]) == x["advantages"][j]
    else:
        assert shown["trainer_logprob"] == "not recorded"


def test_filter_failed_open_one_and_read_its_tokens(browser, served, recorded_run, tmp_path):
    episodes = _episodes(recorded_run)
    page = _page(browser)
    page.goto(served)
    _ready(page)
    assert page.query_selector_all("#curves .curve svg circle") and page.query_selector_all("#steps-table tr.clickable")
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    page.click("nav button[data-view='episodes']")
    _ready(page)
    page.select_option("#f-dump", "*")
    _ready(page)
    page.select_option("#f-status", "failed")
    _ready(page)
    rows = page.query_selector_all("#episodes tr.episode")
    failed = {ref for ref, e in episodes.items() if e.sample.status == "failed"}
    assert {r.get_attribute("data-ref") for r in rows} == failed and len(failed) == 4
    assert "status=failed" in page.url

    rows[0].click()
    _ready(page)
    ref = page.get_attribute("#pane-a", "data-ref")
    episode = episodes[ref]
    s = episode.sample
    assert page.inner_text("#pane-a .kv .badge") == "failed" and "flaky scorer" in page.inner_text("#pane-a")
    tokens = page.query_selector_all("#pane-a .tok")
    assert len(tokens) == len(s.prompt_ids) + len(s.response_ids)
    trained, masked = page.query_selector_all("#pane-a .tok.trained"), page.query_selector_all("#pane-a .tok.masked")
    assert len(trained) == sum(s.loss_mask) and len(masked) == len(tokens) - sum(s.loss_mask)
    style = "el => getComputedStyle(el).backgroundColor"
    assert trained[0].evaluate(style) != masked[0].evaluate(style)  # trained and masked tokens look different
    for k in range(len(s.prompt_ids), len(tokens)):
        _check_token(page, episode, k)
    assert page.inner_text("#pane-a .tok.sel") == page.query_selector_all("#pane-a .tok")[len(tokens) - 1].inner_text()
    page.screenshot(path=str(tmp_path / "failed_episode.png"), full_page=True)

    link = page.url  # a shared link opens the same episode, filters and token
    other = _page(browser)
    other.goto(link)
    _ready(other)
    assert other.get_attribute("#pane-a", "data-ref") == ref
    assert other.input_value("#f-status") == "failed" and len(other.query_selector_all("#episodes tr.episode")) == 4
    assert _detail(other) == _detail(page)
    other.close()
    page.close()


def test_a_trained_episode_beside_another(browser, served, recorded_run, tmp_path):
    episodes = _episodes(recorded_run)
    kept = [ref for ref, e in episodes.items() if e.extras["kept"]]
    page = _page(browser)
    page.goto(f"{served}#view=episodes&dump=rollout_000001&ep={kept[-1]}&cmp={kept[0]}")
    _ready(page)
    assert page.get_attribute("#pane-a", "data-ref") == kept[-1] and page.get_attribute("#pane-b", "data-ref") == kept[0]
    for pane, ref in (("#pane-a", kept[-1]), ("#pane-b", kept[0])):
        e = episodes[ref]
        for k in range(len(e.sample.prompt_ids), len(e.sample.prompt_ids) + len(e.sample.response_ids)):
            _check_token(page, e, k, pane)
    page.select_option("#pane-a .color-mode", "diff")  # a heat map keeps masked tokens apart
    _ready(page)
    assert page.query_selector_all("#pane-a .tok.heat.masked") and page.query_selector_all("#pane-a .tok.heat.trained")
    page.screenshot(path=str(tmp_path / "side_by_side.png"), full_page=True)
    page.close()


def test_compare_evaluations_before_and_after(browser, served, recorded_run, tmp_path):
    before = read_dump(recorded_run / "rollout_data" / "eval_000000.jsonl.gz")
    page = _page(browser)
    page.goto(served + "#view=evals")
    _ready(page)
    assert page.input_value("#e-a") == "0:eval_000000" and page.input_value("#e-b") == "0:eval_000002"
    rows = page.query_selector_all("#eval-pairs tr.clickable")
    assert len(rows) == len(before.episodes)
    rows[0].click()
    _ready(page)
    assert page.get_attribute("#pane-a", "data-ref") == "0:eval_000000:0"
    assert page.get_attribute("#pane-b", "data-ref") == "0:eval_000002:0"
    assert page.inner_text("#pane-a .msg.user") == page.inner_text("#pane-b .msg.user")  # the same prompt
    page.screenshot(path=str(tmp_path / "evals.png"), full_page=True)
    page.close()


def test_the_exported_file_works_offline(browser, recorded_run, tmp_path):
    from agentrl.view.export import export_html

    path = export_html(Sources([recorded_run]), tmp_path / "report.html")
    episodes = _episodes(recorded_run)
    page = _page(browser)
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.goto(Path(path).as_uri() + "#view=episodes&dump=*&status=failed&q=flaky")
    _ready(page)
    rows = page.query_selector_all("#episodes tr.episode")
    assert len(rows) == 4  # search runs in the page: every failed episode's error names the flaky scorer
    rows[1].click()
    _ready(page)
    episode = episodes[page.get_attribute("#pane-a", "data-ref")]
    _check_token(page, episode, len(episode.sample.prompt_ids))
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
    page.close()


PWN = ['<img src=x onerror="window.__pwned=1">', "</script><script>window.__pwned=2</script>",
       '" onmouseover="window.__pwned=3" x="', "javascript:window.__pwned=4", "<svg onload=window.__pwned=5>",
       "<style>*{display:none}</style>", "${window.__pwned=6}", "<!--", "\u202eevil"]
HOSTILE = " ".join(PWN)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A run whose every string (messages, tool calls, token texts, metric names, labels, environment, status,
    task, error, config, summary, the folder's name) carries markup, script and a right-to-left override."""
    import json

    from agentrl.obs.dump import DumpedEpisode, write_dump
    from agentrl.types import Sample

    run = tmp_path_factory.mktemp("hostile") / f"run{PWN[0]}"
    messages = [{"role": "user", "content": "<think>" + HOSTILE + "</think>" + HOSTILE},
                {"role": "assistant", "content": HOSTILE,
                 "tool_calls": [{"id": HOSTILE, "type": "function", "function": {"name": HOSTILE, "arguments": HOSTILE}}]},
                {"role": "tool", "name": HOSTILE, "content": "error " + HOSTILE}, {"role": HOSTILE, "content": [HOSTILE]}]
    episodes = []
    for i, status in enumerate([HOSTILE, "ok", "failed"]):
        s = Sample(prompt_ids=[1, 2], response_ids=[3, 4, 5], loss_mask=[1, 0, 1], rollout_logprobs=[-0.1, 0.0, -0.3],
                   reward=float(i), group_id=0, sample_index=i, messages=messages, env_id=HOSTILE, label=HOSTILE,
                   error=HOSTILE, metrics={HOSTILE: 1.0, "tool_errors": 1.0}, metadata={HOSTILE: HOSTILE}, status=status)
        episodes.append(DumpedEpisode(s, {"kept": True, "advantages": [1.0, 0.0, 1.0], HOSTILE: HOSTILE, "task": HOSTILE,
                                          "row": 0}))
    texts = {1: HOSTILE, 2: "\u200b", 3: "\u202e", 4: "after", 5: "\x00"}
    for name in ("rollout_000000", "eval_000000", "eval_000001"):
        write_dump(run / "rollout_data" / f"{name}.jsonl.gz", {"kind": name[:-7], "step": 1, HOSTILE: HOSTILE}, episodes,
                   texts)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": k, "rollout/reward_mean": 0.5, HOSTILE: 1.0,
                                                           f"eval/{HOSTILE}/reward_mean": 0.2}) + "\n" for k in (1, 2)))
    (run / "config.json").write_text(json.dumps({HOSTILE: HOSTILE}))
    (run / "summary.json").write_text(json.dumps({HOSTILE: {HOSTILE: HOSTILE}}))
    return run


HOSTILE_VIEWS = ["", "#view=run", "#view=episodes&dump=rollout_000000&ep=0:rollout_000000:0&cmp=0:rollout_000000:1&tok=2&color=__proto__",
                 "#view=episodes&dump=rollout_000000&q=img&ep=0:rollout_000000:0&color=advantage",
                 "#view=evals&ep=0:eval_000000:0&cmp=0:eval_000001:0"]


def _check_inert(page, url):
    for view in HOSTILE_VIEWS:
        page.goto(url + view)
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert not page._errors, page._errors
        for el in page.query_selector_all("main section:not([hidden]) .tok"):
            el.click(timeout=5000)  # every token, the invisible ones included, has a width and can be clicked
        for el in page.query_selector_all("main section:not([hidden]) td, main section:not([hidden]) pre")[:80]:
            el.dispatch_event("mouseover")
        assert page.evaluate("window.__pwned") is None, view
        assert not page.query_selector_all("main img, main svg[onload], main style, main script"), view
    pane = "main section:not([hidden]) #pane-a"
    text = page.inner_text(pane)
    assert PWN[0] in text and PWN[1] in text  # shown as text
    assert "\u202e" not in text and "\u27e8U+202E\u27e9evil" in text  # the override is a visible mark, not obeyed
    tokens = [t.inner_text() for t in page.query_selector_all(pane + " .tok")]
    assert tokens[1:] == ["\u27e8U+200B\u27e9", "\u27e8U+202E\u27e9", "after", "\u2400"]


def test_hostile_episode_text_stays_text_in_the_page_and_the_export(browser, hostile_run, tmp_path):
    from agentrl.view.export import export_html

    server = make_server(Sources([hostile_run]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = _page(browser)
    try:
        _check_inert(page, server.url)
        path = export_html(Sources([hostile_run]), tmp_path / "report.html")
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
        _check_inert(page, Path(path).as_uri())
    finally:
        page.close()
        server.shutdown()
        server.server_close()


def test_a_search_that_stops_early_says_so(browser, hostile_run):
    server = make_server(Sources([hostile_run], search_seconds=0), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = _page(browser)
    try:
        page.goto(server.url + "#view=episodes&dump=rollout_000000&q=after")
        _ready(page)
        assert "search stopped early: 0 of 1 dumps searched" in page.inner_text("#count .warn")
    finally:
        page.close()
        server.shutdown()
        server.server_close()
