"""SearchEnv: scripted Search-R1 episodes, rewards by hand, retrieval failures, registration."""

import asyncio
import json
import socket
from pathlib import Path

import pytest
from fastapi import FastAPI

from agentrl.engine.server import BackgroundServer
from agentrl.env import TurnLimit, check_env, make
from envs._qa_metrics import exact_match, f1_score, normalize_answer
from envs.search import BUILTIN_QUESTIONS, INVALID_ACTION, MINI_CORPUS, SearchEnv, format_documents, parse_row
from tools.retriever import load_retriever
from tools.retriever.server import create_app

FIXTURES = Path(__file__).parents[1] / "fixtures" / "search"
CORPUS = FIXTURES / "corpus.jsonl"
QA = [json.loads(line) for line in (FIXTURES / "qa.jsonl").read_text().splitlines()]
OSLO = {"question": "what is the capital of Norway", "golden_answers": ["Oslo"]}


@pytest.fixture(scope="module")
def fixture_retriever():
    return load_retriever(CORPUS, "bm25", cache=False)


@pytest.fixture(scope="module")
def server(fixture_retriever):
    with BackgroundServer(create_app(fixture_retriever)) as s:
        yield s


def dead_url():
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/retrieve"


# -- metrics -----------------------------------------------------------------------------------
def test_qa_metrics_by_hand():
    assert normalize_answer("  The Lake-Baikal, an  example. ") == "lakebaikal example"
    assert exact_match("the Oslo.", ["Bergen", "oslo"]) == 1.0
    assert exact_match("Oslo city", "Oslo") == 0.0
    # "da vinci" vs "leonardo da vinci": 2 common tokens, P = 2/2, R = 2/3 -> F1 = 0.8
    assert f1_score("da Vinci", ["Leonardo da Vinci"]) == pytest.approx(0.8)
    assert f1_score("da Vinci", ["Michelangelo", "Leonardo da Vinci", "da Vinci"]) == 1.0
    assert f1_score("yes it is", ["yes"]) == 0.0 and f1_score("yes", ["Yes"]) == 1.0
    assert f1_score("", ["Oslo"]) == 0.0


# -- scripted episodes -------------------------------------------------------------------------
def test_search_then_answer_episode(fixture_retriever):
    env = SearchEnv(retriever=fixture_retriever, topk=2)
    messages, info = env.reset(options=OSLO)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    prompt = messages[0]["content"]
    assert prompt.endswith("Question: what is the capital of Norway?\n")  # "?" added as Search-R1 does
    for tag in ("<think>", "<search>", "<information>", "<answer>"):
        assert tag in prompt
    assert info["golden_answers"] == ["Oslo"] and info["retriever"].startswith("in-process:bm25:")

    obs, reward, terminated, truncated, info = env.step("<think>I should look it up.</think>\n<search> capital of Norway </search>")
    assert (reward, terminated, truncated) == (0.0, False, False)
    oslo = fixture_retriever.corpus[10]
    helsinki = fixture_retriever.corpus[11]
    assert obs == [{"role": "user", "content": (
        f'\n\n<information>Doc 1(Title: "Oslo") {oslo.text}\nDoc 2(Title: "Helsinki") {helsinki.text}</information>\n\n')}]
    assert info == {"action": "search", "search_count": 1, "tool_calls": 1, "tool_errors": 0, "invalid_count": 0,
                    "query": "capital of Norway"}

    obs, reward, terminated, truncated, info = env.step("<think>Doc 1 answers it.</think>\n<answer> Oslo </answer>")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["prediction"] == "Oslo" and info["em"] == 1.0 and info["f1"] == 1.0 and info["well_formed"] is True
    assert info["search_count"] == 1


@pytest.mark.parametrize("reward, answer, expected", [
    ("em", "Leonardo da Vinci", 1.0),
    ("em", "da Vinci", 0.0),
    ("f1", "da Vinci", 0.8),
    ("f1", "the painter Leonardo da Vinci", 2 * 0.75 * 1.0 / 1.75),  # P = 3/4, R = 3/3
])
def test_em_and_f1_rewards(fixture_retriever, reward, answer, expected):
    env = SearchEnv(retriever=fixture_retriever, reward=reward)
    env.reset(options={"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci"})
    assert env.step(f"<think>I know this.</think><answer>{answer}</answer>")[1] == pytest.approx(expected)


@pytest.mark.parametrize("turns, expected", [
    # lambda = 0.2: (1 - lambda) * EM + lambda * well_formed
    (["<think>a</think><search>capital of Norway</search>", "<think>b</think><answer>Oslo</answer>"], 1.0),
    (["<search>capital of Norway</search>", "<think>b</think><answer>Oslo</answer>"], 0.8),  # no think
    (["<think>a</think><search>capital of Norway</search>", "<think>b</think><answer>Bergen</answer>"], 0.2),
    (["I will search <search>capital of Norway</search>", "<answer>Bergen</answer>"], 0.0),
    (["<think>a</think>nothing to do", "<think>b</think><answer>Oslo</answer>"], 0.8),  # an invalid turn
    (["<think>b</think><answer>Oslo</answer> and more"], 0.8),  # text after the action
    (["<think>a <information>made up</information></think><answer>Oslo</answer>"], 0.8),  # tag inside think
])
def test_format_reward_by_hand(fixture_retriever, turns, expected):
    env = SearchEnv(retriever=fixture_retriever, format_reward=0.2)
    env.reset(options=OSLO)
    for t in turns:
        _, reward, terminated, _, _ = env.step(t)
    assert terminated and reward == pytest.approx(expected)


def test_first_action_wins_and_invalid_actions_get_the_format(fixture_retriever):
    env = SearchEnv(retriever=fixture_retriever)
    env.reset(options=OSLO)
    obs, reward, terminated, _, info = env.step("<search>capital of Norway</search> then <answer>Oslo</answer>")
    assert not terminated and info["action"] == "search"
    obs, reward, terminated, _, info = env.step("I think it is Oslo.")
    assert obs == [{"role": "user", "content": INVALID_ACTION}] and not terminated and info["invalid_count"] == 1
    obs, _, terminated, _, info = env.step("<search>   </search>")
    assert "search query was empty" in obs[0]["content"] and info["action"] == "invalid" and info["invalid_count"] == 2
    assert env.step("<answer>Oslo</answer>")[1:3] == (1.0, True)


def test_no_results_and_long_queries(fixture_retriever):
    env = SearchEnv(retriever=fixture_retriever)
    env.reset(options=OSLO)
    obs, *_ = env.step("<search>zyzzyva quux</search>")
    assert obs[0]["content"] == "\n\n<information>No documents matched the query.</information>\n\n"
    _, _, _, _, info = env.step("<search>" + "Oslo " * 1000 + "</search>")
    assert len(info["query"]) == 2000


# -- reset options -----------------------------------------------------------------------------
def test_reset_accepts_dataset_rows():
    assert parse_row({"id": "q", "question": "who?", "golden_answers": ["A", "B"]}) == ("who?", ["A", "B"])
    assert parse_row({"question": "who?", "answer": "A"}) == ("who?", ["A"])
    assert parse_row({"prompt": "who?", "label": ["A"]}) == ("who?", ["A"])
    search_r1_row = {"question": "who?", "prompt": [{"role": "user", "content": "..."}],
                     "reward_model": {"style": "rule", "ground_truth": {"target": ["A", "a"]}}}
    assert parse_row(search_r1_row) == ("who?", ["A", "a"])
    with pytest.raises(ValueError, match="need the gold answers"):
        parse_row({"question": "who?"})
    with pytest.raises(ValueError, match="non-empty string 'question'"):
        parse_row({"golden_answers": ["A"]})


def test_seeded_fallback_questions_are_deterministic_and_answerable():
    env = SearchEnv(retriever="mini")
    assert env.reset(seed=3) == env.reset(seed=3)
    asked = {env.reset(seed=s)[1]["question"] for s in range(40)}
    assert len(asked) > 1
    mini = load_retriever(MINI_CORPUS, "bm25", cache=False)
    for question, answers in BUILTIN_QUESTIONS:
        text = format_documents([h.document() for h in mini.search([question], 3)[0]])
        assert any(normalize_answer(a) in normalize_answer(text) for a in answers), question


def test_constructor_errors_are_clear(fixture_retriever):
    with pytest.raises(ValueError, match="reward must be one of em, f1"):
        SearchEnv(retriever=fixture_retriever, reward="exact")
    with pytest.raises(ValueError, match=r"format_reward must be a number in \[0, 1\]"):
        SearchEnv(retriever=fixture_retriever, format_reward=2)
    with pytest.raises(ValueError, match="topk must be an integer >= 1"):
        SearchEnv(retriever=fixture_retriever, topk=0)
    with pytest.raises(ValueError, match="not both"):
        SearchEnv("http://127.0.0.1:1/retrieve", retriever=fixture_retriever)
    with pytest.raises(ValueError, match="must be an http"):
        SearchEnv("localhost:8000")
    with pytest.raises(ValueError, match="pass it as retriever_url"):
        SearchEnv(retriever="http://127.0.0.1:8000/retrieve")
    with pytest.raises(TypeError, match="search\\(queries, topk\\)"):
        SearchEnv(retriever=object())


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("AGENTRL_RETRIEVER_URL", raising=False)
    assert SearchEnv().retriever_url == "http://127.0.0.1:8000/retrieve"
    assert SearchEnv(retriever="auto").retriever_url is None  # the mini corpus, in-process
    monkeypatch.setenv("AGENTRL_RETRIEVER_URL", "http://search:9000/retrieve")
    assert SearchEnv().retriever_url == "http://search:9000/retrieve"
    assert SearchEnv(retriever="auto").retriever_url == "http://search:9000/retrieve"
    assert SearchEnv("http://other:1/retrieve", retriever="auto").retriever_url == "http://other:1/retrieve"


# -- over HTTP ---------------------------------------------------------------------------------
def test_remote_retrieval_matches_in_process(server, fixture_retriever):
    remote = SearchEnv(server.url + "/retrieve", record_latency=True)
    local = SearchEnv(retriever=fixture_retriever)
    for env in (remote, local):
        env.reset(options=OSLO)
    action = "<think>x</think><search>highest mountain in the Americas</search>"
    r_obs, _, _, _, r_info = remote.step(action)
    l_obs, _, _, _, l_info = local.step(action)
    assert r_obs == l_obs and 'Doc 1(Title: "Aconcagua")' in r_obs[0]["content"]
    assert r_info["tool_errors"] == 0 and 0 < r_info["retrieval_latency_s"] < 5
    client = remote._client
    remote.step(action)
    assert remote._client is client  # one persistent client per env
    remote.close()
    assert client.is_closed
    remote.close()  # twice is fine
    local.close()


def test_dead_server_becomes_an_observation_and_the_episode_goes_on():
    env = SearchEnv(dead_url(), timeout=2)
    env.reset(options=OSLO)
    obs, reward, terminated, truncated, info = env.step("<think>x</think><search>capital of Norway</search>")
    content = obs[0]["content"]
    assert content.startswith("\n\n<information>retrieval failed: cannot reach the retrieval server at http://127.0.0.1:")
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_errors"] == 1 and "cannot reach" in info["tool_error"] and env.tool_error_count == 1
    assert env.step("<think>y</think><answer>Oslo</answer>")[1:3] == (1.0, True)
    env.close()


@pytest.fixture(scope="module")
def misbehaving_server():
    app = FastAPI()

    @app.post("/slow")
    async def slow():
        await asyncio.sleep(1.0)
        return {"result": [[]]}

    @app.post("/wrong-shape")
    async def wrong_shape():
        return {"docs": ["a"]}

    @app.post("/no-contents")
    async def no_contents():
        return {"result": [[{"document": {"id": "1"}, "score": 1.0}]]}

    @app.post("/error")
    async def error():
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=500, content={"message": "index exploded"})

    @app.post("/title-text")
    async def title_text():  # Search-R1's BM25 server sends title/text/contents
        return {"result": [[{"document": {"title": "Oslo", "text": "Capital of Norway."}, "score": 2.0}]]}

    with BackgroundServer(app) as s:
        yield s


@pytest.mark.parametrize("path, needle", [
    ("/slow", "did not answer within 0.3 s"),
    ("/wrong-shape", 'expected {"result": [[...]]}'),
    ("/no-contents", 'expected documents with a string "contents"'),
    ("/error", "HTTP 500"),
])
def test_bad_servers_become_observations(misbehaving_server, path, needle):
    env = SearchEnv(misbehaving_server.url + path, timeout=0.3)
    env.reset(options=OSLO)
    obs, reward, terminated, _, info = env.step("<search>capital of Norway</search>")
    assert needle in info["tool_error"] and needle in obs[0]["content"] and not terminated
    env.close()


def test_title_text_documents_are_rendered(misbehaving_server):
    env = SearchEnv(misbehaving_server.url + "/title-text")
    env.reset(options=OSLO)
    obs = env.step("<search>capital of Norway</search>")[0]
    assert obs[0]["content"] == '\n\n<information>Doc 1(Title: "Oslo") Capital of Norway.</information>\n\n'
    env.close()


async def test_async_api_against_a_server(server):
    env = SearchEnv(server.url + "/retrieve")
    await env.areset(options={"question": "who was the first computer programmer", "golden_answers": ["Ada Lovelace"]})
    results = await asyncio.gather(*(env.astep("<search>first computer programmer</search>") for _ in range(3)))
    assert all('Doc 1(Title: "Ada Lovelace")' in obs[0]["content"] for obs, *_ in results)
    _, reward, terminated, _, _ = await env.astep("<think>t</think><answer>ada lovelace</answer>")
    assert (reward, terminated) == (1.0, True)
    await env.aclose()
    env.close()


def test_sync_then_async_use_gets_a_client_per_loop(server):
    env = SearchEnv(server.url + "/retrieve")
    env.reset(options=OSLO)
    env.step("<search>capital of Norway</search>")
    first = env._client

    async def run():
        return await env.astep("<search>capital of Finland</search>")

    obs = asyncio.run(run())[0]
    assert 'Title: "Helsinki"' in obs[0]["content"] and env._client is not first
    env.step("<search>capital of Norway</search>")  # back on the private loop: a fresh client again
    current = env._client
    env.close()
    assert current.is_closed


# -- registration ------------------------------------------------------------------------------
def test_registered_env_is_offline_with_four_turns(monkeypatch):
    monkeypatch.delenv("AGENTRL_RETRIEVER_URL", raising=False)
    env = make("agentrl/Search-v0")
    assert isinstance(env, TurnLimit) and env.max_turns == 4
    assert env.unwrapped.retriever_url is None and "search_mini.jsonl" in env.unwrapped.retriever_name
    env.reset(seed=0)
    for _ in range(3):
        assert env.step("<think>x</think><search>capital of Canada</search>")[3] is False
    _, reward, terminated, truncated, info = env.step("<think>x</think><search>capital of Canada</search>")
    assert (reward, terminated, truncated, info["truncated_by"]) == (0.0, False, True, "max_turns")
    remote = make("agentrl/Search-v0", retriever_url="http://127.0.0.1:8000/retrieve")
    assert remote.unwrapped.retriever_url == "http://127.0.0.1:8000/retrieve"


def test_registered_env_passes_check_env(monkeypatch):
    monkeypatch.delenv("AGENTRL_RETRIEVER_URL", raising=False)
    report = check_env(lambda: make("agentrl/Search-v0"))
    assert report.ok, report.problems


def test_env_against_a_dead_server_passes_check_env():
    url = dead_url()
    report = check_env(lambda: TurnLimit(SearchEnv(url, timeout=1), 4))
    assert report.ok, report.problems
