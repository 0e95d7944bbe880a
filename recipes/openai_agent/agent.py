"""A small ReAct agent written with the plain ``openai`` SDK: it knows nothing about agentrl.

The agent gets a client and a task (a row of ``train.jsonl``/``test.jsonl``: ``question`` and
``answer``; ``model``, default ``policy``), offers the model two tools, the calculator (``tools/calculator.py``) and a search over
51 Wikipedia lead sections (BM25, offline: ``envs/data/search_mini.jsonl``), runs the tool calls
that come back as ``tool_calls`` and sends their results, until the model answers without a tool
call or has made ``MAX_CALLS`` calls. Reward: ``task`` 1.0 when the answer is right (the number for
arithmetic, one of the accepted names for a question), else 0; plus ``tool_call`` ``TOOL_BONUS`` once
an episode when a tool call ran without an error (a shaping term: gamed by any valid call, at most
0.1, and held-out success counts ``task`` alone).

``oracle(task)`` gives the replies that solve a task (a calculator call on the question's expression,
or a search for the question, then the answer): ``--sft-data oracle`` warm-starts the policy on the
agent's own conversations with them (``env-kwargs: {oracle: ...}`` in ``config.yaml``).

SmolLM2's chat template does not declare ``tools``, so the system message describes them and the
call format the endpoint parses (hermes ``<tool_call>``); a model whose template does declare them
needs only ``tools=``.

Run it against any OpenAI-compatible server (``agentrl serve`` for example)::

    python recipes/openai_agent/agent.py --base-url http://127.0.0.1:30000/v1 --model <name>

In training it is the environment ``agentrl/Agent-v0`` with ``env-kwargs: {agent:
recipes/openai_agent/agent.py:solve}`` (``recipes/openai_agent/config.yaml``).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

MAX_CALLS = 3
"""Model calls per task (two tool rounds and the answer)."""

TOOL_BONUS = 0.1
"""The shaping reward for an episode with a tool call that ran (paid once)."""

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression such as 37 * 48.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search an encyclopedia; returns the best matching article.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
TOOLS = [CALCULATOR, SEARCH]

SYSTEM = (
    "You answer questions. You have two tools:\n"
    '- calculator: {"expression": "37 * 48"} evaluates arithmetic\n'
    '- search: {"query": "Mount Everest"} looks a topic up in an encyclopedia\n'
    'To use a tool, reply with only <tool_call>{"name": "calculator", "arguments": {"expression": "37 * 48"}}'
    "</tool_call>\n"
    "When you know the answer, reply with just the answer, in a few words."
)


def _call(name: str, **arguments: str) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


EXAMPLES = [
    {"role": "user", "content": "What is 37 * 48?"},
    {"role": "assistant", "content": _call("calculator", expression="37 * 48")},
    {"role": "tool", "tool_call_id": "example-1", "content": "1776"},
    {"role": "assistant", "content": "1776"},
    {"role": "user", "content": "Who invented the phonograph?"},
    {"role": "assistant", "content": _call("search", query="phonograph inventor")},
    {"role": "tool", "tool_call_id": "example-2", "content": "Thomas Alva Edison was an American inventor and businessman. He developed many devices "
                                "in fields such as electric power generation, mass communication, sound recording "
                                "(the phonograph) and motion pictures."},
    {"role": "assistant", "content": "Thomas Edison"},
]
"""Two worked examples the conversation starts with (a 135M model follows a shown format far better than a
described one). They are written as text: SmolLM2's template renders no structured ``tool_calls``."""


async def solve(client: Any, task: dict[str, Any]) -> dict[str, Any]:
    """One task: the ReAct loop, then the answer graded against ``task["answer"]``."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, *EXAMPLES,
                                      {"role": "user", "content": task["question"]}]
    answer, tool_calls, tool_ran = "", 0, False
    for _ in range(MAX_CALLS):
        out = await client.chat.completions.create(model=task.get("model", "policy"), messages=messages,
                                                  tools=TOOLS)
        message = out.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            answer = message.content or ""
            break
        for call in message.tool_calls:
            tool_calls += 1
            result = run_tool(call.function.name, call.function.arguments)
            tool_ran = tool_ran or not result.startswith("Error")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    correct = is_correct(answer, task["answer"])
    return {"task": float(correct), "tool_call": TOOL_BONUS * tool_ran,
            "info": {"answer": answer[:200], "tool_calls": tool_calls}}


def oracle(task: dict[str, Any]) -> list[str]:
    """The replies that solve ``task``: the calculator on an arithmetic question's expression, else a
    search for the question; then the answer."""
    gold = task["answer"] if isinstance(task["answer"], str) else task["answer"][0]
    arithmetic = re.fullmatch(r"What is (-?\d+ [-+*/] -?\d+)\?", task["question"].strip())
    if arithmetic:
        return [_call("calculator", expression=arithmetic.group(1)), gold]
    return [_call("search", query=task["question"].strip().rstrip("?")), gold]


def run_tool(name: str, arguments: str) -> str:
    """A tool's output, or an error message the model reads (the agent never fails on a bad call)."""
    try:
        args = json.loads(arguments)
    except ValueError:
        return "Error: the arguments are not JSON"
    if not isinstance(args, dict):
        return "Error: the arguments must be a JSON object"
    if name == "calculator":
        from tools.calculator import calculator

        return calculator(str(args.get("expression", "")))
    if name == "search":
        return search(str(args.get("query", "")))
    return f"Error: no tool named {name!r}; use calculator or search"


def search(query: str) -> str:
    """The best matching lead section (its first 300 characters)."""
    if not query.strip():
        return "Error: empty query"
    hits = _retriever().search([query[:500]], 1)[0]
    if not hits:
        return "No result."
    doc = hits[0].document() if hasattr(hits[0], "document") else hits[0]
    return str(doc["contents"])[:300]


@functools.lru_cache(maxsize=1)
def _retriever() -> Any:
    from envs.search import MINI_CORPUS
    from tools.retriever import load_retriever

    return load_retriever(MINI_CORPUS, "bm25", cache=False)


def is_correct(answer: str, gold: str | list[str]) -> bool:
    """A number is right when the reply's last number equals it; a name when the reply contains it."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", answer)
    for g in golds:
        if re.fullmatch(r"-?\d+(?:\.\d+)?", g):
            if numbers and float(numbers[-1].replace(",", "")) == float(g):
                return True
        elif _norm(g) and f" {_norm(g)} " in f" {_norm(answer)} ":
            return True
    return False


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def main() -> None:
    import argparse
    import asyncio

    import openai

    p = argparse.ArgumentParser(description="Run the agent on the held-out tasks against an OpenAI-compatible server.")
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="policy")
    p.add_argument("--tasks", default="recipes/openai_agent/test.jsonl")
    args = p.parse_args()

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=args.base_url, api_key="none")
        with open(args.tasks, encoding="utf-8") as f:
            tasks = [json.loads(line) for line in f if line.strip()]
        results = [await solve(client, {**t, "model": args.model}) for t in tasks]
        print(f"success: {sum(r['task'] for r in results) / len(results):.2f} on {len(results)} tasks")

    asyncio.run(run())


if __name__ == "__main__":
    main()
