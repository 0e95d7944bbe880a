"""``agentrl/Search-v0``: question answering with a search engine, Search-R1's protocol.

The model reasons in ``<think>...</think>``, searches with ``<search>query</search>`` and gets the
top-k documents back as a user message ``\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n``,
and ends with ``<answer>...</answer>`` (Jin et al., "Search-R1: Training LLMs to Reason and
Leverage Search Engines with Reinforcement Learning", 2025). The first ``<search>`` or
``<answer>`` block of a turn is its action, as in Search-R1 (sample with
``stop=list(SearchEnv.stop_strings)`` so a turn ends at its action); a turn with neither gets a
message restating the format. The turn budget is the registration's ``max_turns`` (4), enforced
by the ``TurnLimit`` wrapper.

Reward, on the answer turn: ``score = EM`` (normalised exact match against any gold answer; 0/1)
or token ``F1`` (``reward="f1"``), both from :mod:`envs._qa_metrics`; with
``format_reward=λ > 0`` the reward is ``(1 - λ) * score + λ * well_formed``, where
``well_formed`` says every turn was ``<think>...</think>`` followed by exactly one
``<search>...</search>`` or (last turn) ``<answer>...</answer>`` with only whitespace around.
That gives Search-R1's ``qa_em_format`` values for EM: 1 (right, well formed), 1 - λ (right,
badly formed), λ (wrong, well formed), 0.

Named reward components (:mod:`agentrl.env.shaping`), in the answer turn's
``info["reward_components"]`` when ``format_reward`` or ``shaping`` is set: ``task`` (the score),
``format`` (``λ * (well_formed - score)``: Search-R1's formula written as a correction of the score) and
the shaping terms. ``shaping={"search": w}`` adds ``w`` on the first turn that searches with a non-empty
query, once an episode. How it can be gamed: a search followed by any answer collects it; paid once, an
episode earns at most ``w`` from it. Held-out success counts the task alone. ``oracle()`` (the warm
start's demonstrations, ``--sft-data oracle``) searches for the question, then answers with the first
gold answer that the retrieved documents contain (else the first gold answer); ``exploits()`` collect
the shaping without answering right.

Retrieval, first match wins:
  1. ``retriever_url=`` a server speaking Search-R1's retrieval protocol (``agentrl retriever``,
     Search-R1's own ``retrieval_server.py``...), over a persistent ``httpx.AsyncClient``;
  2. ``retriever=`` an in-process object with ``search(queries, topk)`` (see
     :mod:`tools.retriever`), or a JSONL corpus path indexed in-process with BM25, or ``"mini"``
     (the 51-article corpus in ``envs/data/search_mini.jsonl``), or ``"auto"``: the server at
     ``$AGENTRL_RETRIEVER_URL`` when that is set, else ``"mini"``. The registered
     ``agentrl/Search-v0`` uses ``"auto"``, so it runs offline and deterministically until
     you point it at a server;
  3. ``$AGENTRL_RETRIEVER_URL``, else ``http://127.0.0.1:8000/retrieve``.

A dead, slow or misbehaving server never raises: the observation becomes
``<information>retrieval failed: ...</information>`` and ``info["tool_error"]`` says why.

Options of ``reset`` (a dataset row): ``{"question": str, "golden_answers": [str, ...]}``
(FlashRAG's NQ/HotpotQA rows) or ``"answer"``/``"answers"``/``"label"`` (a string or a list), or
Search-R1's ``"reward_model": {"ground_truth": {"target": [...]}}``. Without options a built-in
question answerable from the mini corpus is drawn with the seeded RNG.

Example::

    >>> env = SearchEnv(retriever="mini")
    >>> messages, info = env.reset(options={"question": "What is the capital of Canada?", "golden_answers": ["Ottawa"]})
    >>> obs, reward, terminated, truncated, info = env.step("<think>Look it up.</think><search>capital of Canada</search>")
    >>> obs[0]["content"][:44]
    '\\n\\n<information>Doc 1(Title: "Ottawa") Ottawa'
    >>> env.step("<think>Doc 1 says so.</think><answer>Ottawa</answer>")[1:3]
    (1.0, True)
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.env.shaping import combine, shaping_weights
from envs._qa_metrics import exact_match, f1_score

__all__ = ["BUILTIN_QUESTIONS", "SHAPING_TERMS", "DEFAULT_URL", "INSTRUCTION", "MINI_CORPUS", "URL_ENV_VAR", "RetrievalError",
           "SearchEnv", "format_documents", "parse_action", "parse_answers", "parse_response", "parse_row"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000/retrieve"
URL_ENV_VAR = "AGENTRL_RETRIEVER_URL"
MINI_CORPUS = Path(__file__).parent / "data" / "search_mini.jsonl"
REWARDS = ("em", "f1")
SHAPING_TERMS = {"search": "w on the first turn that searches with a non-empty query, once an episode"}
"""The shaping terms ``SearchEnv(shaping=...)`` takes (see the module doc)."""
MAX_QUERY_CHARS = 2000  # longer queries are cut: a runaway generation must not flood the server

INSTRUCTION = (
    "Answer the question below. Each time you receive new information, first reason about it inside "
    "<think> and </think>. If you lack some knowledge, query a search engine by writing "
    "<search> your query </search>, and the top results will come back between <information> and "
    "</information>. You may search as many times as you need. When you know the answer, write it inside "
    "<answer> and </answer>, briefly and without explanation, for example <answer> Beijing </answer>. "
    "Question: {question}\n"
)
INVALID_ACTION = (
    "\nYour last message contained no valid action. To search, put the query between <search> and "
    "</search>. To give the final answer, put it between <answer> and </answer>. Please try again.\n"
)

# Built-in questions, each answerable from envs/data/search_mini.jsonl: the samples of reset() without options.
BUILTIN_QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital city of Canada?", ("Ottawa",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("Who wrote Romeo and Juliet?", ("William Shakespeare", "Shakespeare")),
    ("What is the highest mountain on Earth above sea level?", ("Mount Everest", "Everest")),
    ("Who painted the Mona Lisa?", ("Leonardo da Vinci", "Leonardo")),
    ("Which is the largest and deepest ocean on Earth?", ("Pacific Ocean", "Pacific")),
    ("Who shared the 1945 Nobel Prize in Medicine for the discovery of penicillin with Florey and Chain?",
     ("Alexander Fleming", "Fleming")),
    ("What is the chemical symbol of gold?", ("Au",)),
)

_ANY_TAG = re.compile(r"</?(?:think|search|information|answer)>")


class SearchEnv(TextEnv):
    """Search-R1's search-and-answer protocol over any retrieval server (see the module docstring)."""

    stop_strings: tuple[str, ...] = ("</search>", "</answer>")
    """Stop strings that end a turn at its action (keep them in the output)."""

    def __init__(
        self,
        retriever_url: str | None = None,
        *,
        retriever: Any = None,
        topk: int = 3,
        reward: str = "em",
        format_reward: float = 0.0,
        timeout: float = 10.0,
        record_latency: bool = False,
        shaping: Mapping[str, float] | None = None,
    ):
        super().__init__()
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {reward!r}")
        if not (isinstance(format_reward, (int, float)) and 0.0 <= format_reward <= 1.0):
            raise ValueError(f"format_reward must be a number in [0, 1]; got {format_reward!r}")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1; got {topk!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
        self.topk, self.reward_kind, self.format_reward = topk, reward, float(format_reward)
        self.timeout, self.record_latency = float(timeout), record_latency
        self.shaping = shaping_weights(shaping, SHAPING_TERMS, "Search")
        self.retriever_url, self.retriever = _resolve_retrieval(retriever_url, retriever)
        self.retriever_name = self.retriever_url or _describe(self.retriever)
        self._client: Any = None  # httpx.AsyncClient, made on the first remote search
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.question, self.golden_answers = "", [""]
        self._new_episode()

    def _new_episode(self) -> None:
        self.search_count = self.tool_error_count = self.invalid_count = 0
        self.retrieval_latency_s = 0.0
        self._well_formed: list[bool] = []
        self._last_documents = ""

    # -- the episode ---------------------------------------------------------------------
    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.seed_rng(seed)
        if options:
            self.question, self.golden_answers = parse_row(options)
        else:
            question, answers = BUILTIN_QUESTIONS[int(self.np_random.integers(0, len(BUILTIN_QUESTIONS)))]
            self.question, self.golden_answers = question, list(answers)
        self._new_episode()
        question = self.question.strip()
        if question and not question.endswith("?"):
            question += "?"  # NQ questions come without one; Search-R1 adds it the same way
        messages = [{"role": "user", "content": INSTRUCTION.format(question=question)}]
        info = {"question": self.question, "golden_answers": list(self.golden_answers),
                "retriever": self.retriever_name, "topk": self.topk}
        return messages, info

    async def astep(self, action: str):
        action = action if isinstance(action, str) else str(action)
        kind, content = parse_action(action)
        content = content.strip()
        if kind == "answer":
            return self._finish(action, content)
        if kind == "search" and content:
            self._well_formed.append(_well_formed(action, "search"))
            first = self.search_count == 0
            messages, _, terminated, truncated, info = await self._search(content)
            return messages, self._shaped(0.0, {"search": float(first)}, info), terminated, truncated, info
        self._well_formed.append(False)
        self.invalid_count += 1
        message = INVALID_ACTION if kind is None else "\nYour search query was empty. " + INVALID_ACTION.lstrip()
        info = self._info("invalid")
        return [{"role": "user", "content": message}], self._shaped(0.0, {}, info), False, False, info

    def _finish(self, action: str, prediction: str):
        em = exact_match(prediction, self.golden_answers)
        f1 = f1_score(prediction, self.golden_answers)
        score = em if self.reward_kind == "em" else f1
        well_formed = all(self._well_formed) and _well_formed(action, "answer")
        info = self._info("answer", prediction=prediction, em=em, f1=f1, well_formed=well_formed,
                          golden_answers=list(self.golden_answers))
        reward = self._shaped(score, {}, info, format_term=self.format_reward * (float(well_formed) - score))
        return [], reward, True, False, info

    # -- demonstrations and exploits --------------------------------------------------------
    def oracle(self) -> str:
        """The reply that solves the current state: search for the question, then answer with the first gold
        answer found in the retrieved documents (else the first gold answer)."""
        if not self.search_count:
            return f"<think>I need to look this up.</think>\n<search> {self.question.strip()} </search>"
        found = [a for a in self.golden_answers if a.lower() in self._last_documents.lower()]
        return f"<think>The documents answer it.</think>\n<answer> {(found or self.golden_answers)[0]} </answer>"

    def exploits(self) -> dict[str, Any]:
        """Scripted policies that collect the shaping without a right answer
        (:func:`agentrl.env.shaping.check_shaping`): one search then a wrong answer; searches every turn."""
        search = "<think>Search.</think>\n<search> anything </search>"
        wrong = "<think>Answer.</think>\n<answer> no idea at all </answer>"
        return {"search_then_wrong": lambda: wrong if self.search_count else search, "search_forever": lambda: search}

    def _shaped(self, task: float, earned: Mapping[str, float], info: dict[str, Any], format_term: float = 0.0) -> float:
        """The step's reward; its components go into ``info`` when the episode has any (module doc)."""
        reward, parts = combine(task, earned, self.shaping)
        if self.shaping or self.format_reward:
            info["reward_components"] = parts | {"format": format_term}
        return reward + format_term

    async def _search(self, query: str):
        query = query[:MAX_QUERY_CHARS]
        start = time.perf_counter()
        try:
            docs = await self._retrieve(query)
            body, error = format_documents(docs), None
        except Exception as e:  # a tool failure is an observation, never a crash
            error = _error_text(e, self.retriever_url, self.timeout)
            body = f"retrieval failed: {error}"
            log.warning("search %r failed: %s", query[:80], error)
        latency = time.perf_counter() - start
        self._last_documents = body
        self.search_count += 1
        self.tool_error_count += error is not None
        self.retrieval_latency_s += latency
        extra: dict[str, Any] = {"query": query}
        if error is not None:
            extra["tool_error"] = error
        if self.record_latency:
            extra["retrieval_latency_s"] = latency
        info = self._info("search", tool_calls=1, tool_errors=int(error is not None), **extra)
        return [{"role": "user", "content": f"\n\n<information>{body}</information>\n\n"}], 0.0, False, False, info

    def _info(self, action: str, *, tool_calls: int = 0, tool_errors: int = 0, **extra: Any) -> dict[str, Any]:
        return {"action": action, "search_count": self.search_count, "tool_calls": tool_calls,
                "tool_errors": tool_errors, "invalid_count": self.invalid_count, **extra}

    # -- retrieval -----------------------------------------------------------------------
    async def _retrieve(self, query: str) -> list[Mapping[str, Any]]:
        if self.retriever is not None:
            hits = await asyncio.to_thread(self.retriever.search, [query], self.topk)
            return [h.document() if hasattr(h, "document") else h for h in hits[0]]
        client = self._http_client()
        payload = {"queries": [query], "topk": self.topk, "return_scores": True}
        response = await client.post(self.retriever_url, json=payload)
        if response.status_code != 200:
            raise RetrievalError(f"HTTP {response.status_code} from {self.retriever_url}: {response.text[:200]}")
        return parse_response(response.json())

    def _http_client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            # a client is bound to the loop it first ran on: a new loop gets a new client
            self._close_client()
            self._client = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
            self._client_loop = loop
        return self._client

    def _close_client(self) -> None:
        client, loop = self._client, self._client_loop
        self._client = self._client_loop = None
        if client is None or client.is_closed or loop is None or loop.is_closed():
            return  # nothing open, or its loop is gone and took the connections with it
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(client.aclose())
        elif running is None and not loop.is_running():
            loop.run_until_complete(client.aclose())
        # else another loop runs in this thread: the old client cannot be awaited now; its
        # connections close with its loop (TextEnv.close closes the env's private loop)

    async def aclose(self) -> None:
        """Close the HTTP client from inside an event loop (``close()`` works too)."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None and not client.is_closed:
            await client.aclose()

    def close(self) -> None:
        """Close the HTTP client and the private event loop; calling it twice is allowed."""
        self._close_client()
        super().close()


class RetrievalError(RuntimeError):
    """A retrieval server answered, but not with Search-R1's response shape."""


def parse_row(options: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(question, golden_answers)`` from a dataset row given as reset options."""
    question = options.get("question")
    if not isinstance(question, str) and isinstance(options.get("prompt"), str):
        question = options["prompt"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"reset options need a non-empty string 'question'; got keys {sorted(options)}")
    return question, parse_answers(options)


def parse_answers(options: Mapping[str, Any]) -> list[str]:
    """Gold answers from ``golden_answers``, ``answer``, ``answers``, ``label`` or Search-R1's
    ``reward_model.ground_truth.target``."""
    candidates = [options.get(k) for k in ("golden_answers", "answer", "answers", "label")]
    ground_truth = (options.get("reward_model") or {}).get("ground_truth") if isinstance(
        options.get("reward_model"), Mapping) else None
    if isinstance(ground_truth, Mapping):
        candidates.append(ground_truth.get("target"))
    for value in candidates:
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, Sequence) and not isinstance(value, str) and value:
            answers = [str(v) for v in value if str(v).strip()]
            if answers:
                return answers
    raise ValueError("reset options need the gold answers as 'golden_answers' (a list), 'answer', 'answers' or "
                     f"'label' (a string or a list); got keys {sorted(options)}")


def parse_response(data: Any) -> list[Mapping[str, Any]]:
    """The documents of the first query in a Search-R1 ``/retrieve`` response (scored or not)."""
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list) or not result or not isinstance(result[0], list):
        raise RetrievalError(f'expected {{"result": [[...]]}}; got {str(data)[:200]}')
    docs: list[Mapping[str, Any]] = []
    for item in result[0]:
        doc = item.get("document", item) if isinstance(item, dict) else item
        if not isinstance(doc, dict) or not isinstance(doc.get("contents", doc.get("text")), str):
            raise RetrievalError(f'expected documents with a string "contents"; got {str(item)[:200]}')
        docs.append(doc)
    return docs


def format_documents(docs: Sequence[Mapping[str, Any]]) -> str:
    """Search-R1's rendering: ``Doc i(Title: <first line>) <rest>`` one per line."""
    if not docs:
        return "No documents matched the query."
    lines = []
    for i, doc in enumerate(docs, 1):
        contents = doc.get("contents")
        if not isinstance(contents, str):  # a title/text server
            contents = f'"{doc.get("title", "")}"\n{doc.get("text", "")}'
        title, _, text = contents.partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}")
    return "\n".join(lines)


def parse_action(text: str) -> tuple[str | None, str]:
    """``(kind, content)`` of a turn's action: the first ``<search>`` or ``<answer>`` block closed by
    its own tag, as Search-R1's ``re.search(r"<(search|answer)>(.*?)</\\1>", text, re.DOTALL)``
    finds it, but with a few linear string searches (that expression rescans the rest of the text
    for every unclosed tag: 64 KB of ``<search>`` took 7 s); ``(None, "")`` when there is none.

    The first opening tag of a kind is its only candidate: when a later one has a closing tag
    after it, so has the first.

    Example::

        >>> parse_action("<search>a <answer>b</answer>")
        ('answer', 'b')
    """
    best: tuple[int, str, str] | None = None
    for kind in ("search", "answer"):
        start = text.find(f"<{kind}>")
        body = start + len(kind) + 2
        close = text.find(f"</{kind}>", body) if start >= 0 else -1
        if close >= 0 and (best is None or start < best[0]):
            best = (start, kind, text[body:close])
    return (best[1], best[2]) if best else (None, "")


def _well_formed(action: str, kind: str) -> bool:
    """Only whitespace around ``<think>...</think>`` then one ``<kind>...</kind>``, no other tags in
    either, a non-empty action (Search-R1's format check), in linear time."""
    text = action.strip()
    think_end = text.find("</think>")
    if not text.startswith("<think>") or think_end < 0:
        return False
    rest = text[think_end + len("</think>"):].lstrip()
    opening, closing = f"<{kind}>", f"</{kind}>"
    if len(rest) < len(opening) + len(closing) or not (rest.startswith(opening) and rest.endswith(closing)):
        return False
    thought, body = text[len("<think>"):think_end], rest[len(opening):-len(closing)]
    return not _ANY_TAG.search(thought) and not _ANY_TAG.search(body) and bool(body.strip())


def _resolve_retrieval(url: str | None, retriever: Any) -> tuple[str | None, Any]:
    """``(url, None)`` for a server, ``(None, retriever)`` for an in-process retriever."""
    if url is not None and retriever not in (None, "auto"):
        raise ValueError("give retriever_url (a server) or retriever (in-process), not both")
    if url is not None:
        return _check_url(url), None
    if retriever == "auto":
        env_url = os.environ.get(URL_ENV_VAR)
        return (_check_url(env_url), None) if env_url else (None, _in_process("mini"))
    if retriever is not None:
        return None, _in_process(retriever)
    return _check_url(os.environ.get(URL_ENV_VAR) or DEFAULT_URL), None


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"retriever_url must be an http(s) URL such as {DEFAULT_URL}; got {url!r}")
    return url


def _in_process(retriever: Any) -> Any:
    if isinstance(retriever, (str, os.PathLike)):
        from tools.retriever import load_retriever

        if str(retriever) == "mini":
            return load_retriever(MINI_CORPUS, "bm25", cache=False)
        if str(retriever).startswith(("http://", "https://")):
            raise ValueError(f"retriever={retriever!r} looks like a URL: pass it as retriever_url")
        return load_retriever(Path(retriever), "bm25")
    if not callable(getattr(retriever, "search", None)):
        raise TypeError("retriever must have a search(queries, topk) method (see tools.retriever), be a JSONL "
                        f"corpus path, 'mini' or 'auto'; got {type(retriever).__name__}")
    return retriever


def _describe(retriever: Any) -> str:
    corpus = getattr(retriever, "corpus", None)
    where = getattr(corpus, "path", None)
    return f"in-process:{getattr(retriever, 'method', type(retriever).__name__)}" + (f":{where}" if where else "")


def _error_text(e: BaseException, url: str | None, timeout: float) -> str:
    import httpx

    if url is None:  # an in-process retriever
        return f"{type(e).__name__}: {e}"
    if isinstance(e, httpx.TimeoutException):
        return f"the retrieval server at {url} did not answer within {timeout:g} s"
    if isinstance(e, httpx.ConnectError):
        return f"cannot reach the retrieval server at {url} (is it running? start one with `agentrl retriever`)"
    if isinstance(e, ValueError) and not isinstance(e, RetrievalError):  # response.json() on a non-JSON body
        return f"the retrieval server at {url} sent a response that is not JSON: {e}"
    return f"{type(e).__name__}: {e}"
