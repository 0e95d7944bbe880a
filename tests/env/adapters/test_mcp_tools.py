"""Tools from a real MCP server started by the test (tests/env/adapters/mcp_server.py), over stdio and
streamable HTTP: schemas from the server, calls, errors and timeouts as tool messages, check-env with the
exploit check, and a 2-rollout training run."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import pytest

pytest.importorskip("mcp", reason="pip install 'agentrl[mcp]'")

from agentrl.env import register  # noqa: E402
from agentrl.env.adapters.mcp_tools import MCPToolEnv  # noqa: E402
from agentrl.env.cli import main as check_env_main  # noqa: E402

SERVER = str(Path(__file__).with_name("mcp_server.py"))
STDIO = [{"command": sys.executable, "args": [SERVER]}]
ROWS = [{"prompt": "How much do 4 pears cost? Use the tools.", "label": "20"},
        {"prompt": "How much do 2 melons cost? Use the tools.", "label": "24"}]


def call(name, **arguments):
    import json

    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture(scope="module")
def http_server():
    """The server over streamable HTTP on a free loopback port, for the whole module."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the MCP server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def registered(http_server):
    """Each episode connects to the running server (a stdio server would start a process per episode)."""
    register("MCPShop-v0", "agentrl.env.adapters.mcp_tools:MCPToolEnv", max_turns=4, servers=[{"url": http_server}],
             rows=ROWS, tool_timeout=2.0)
    yield "agentrl/MCPShop-v0"
    del gymnasium.registry["agentrl/MCPShop-v0"]


def test_stdio_server_tools_calls_errors_and_timeouts():
    env = MCPToolEnv(STDIO, tool_timeout=3.0)
    try:
        schemas = {s["function"]["name"]: s["function"] for s in env.tool_schemas()}
        assert set(schemas) == {"price", "multiply", "wait"}
        assert schemas["multiply"]["parameters"]["required"] == ["a", "b"]
        assert schemas["price"]["description"] == "The price of one item in the shop, in dollars."
        messages, info = env.reset(options=ROWS[0])
        assert "price" in messages[0]["content"] and info == {"tools": ["price", "multiply", "wait"]}
        out = env.step(call("price", item="pear") + call("multiply", a=4, b=5))
        assert [m["content"] for m in out[0]] == ["5", "20"] and out[1:3] == (0.0, False)
        out = env.step(call("price", item="kiwi"))
        assert out[0][0]["content"].startswith("Error") and "no such item: 'kiwi'" in out[0][0]["content"]
        assert out[4]["tool_errors"] == 1
        out = env.step(call("multiply", a="four", b=5))
        assert out[0][0]["content"].startswith("Error") and out[4]["tool_errors"] == 1
        out = env.step(call("wait", seconds=5))
        assert out[0][0]["content"] == "Error: tool 'wait' timed out after 3 s"
        assert env.step("It costs <answer>20</answer>.")[1:3] == (1.0, True)
    finally:
        env.close()
        env.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_server(http_server):
    env = MCPToolEnv([{"url": http_server}])
    try:
        env.reset(options=ROWS[1])
        assert env.step(call("price", item="melon"))[0][0]["content"] == "12"
        assert env.step("<answer>24</answer>")[1] == 1.0
    finally:
        env.close()


def test_a_server_that_cannot_start_fails_at_once():
    with pytest.raises(RuntimeError, match="could not connect to the MCP servers"):
        MCPToolEnv([{"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]}])


def test_check_env_and_exploits(registered, capsys):
    """``agentrl check-env --exploits`` on it, as a user runs it."""
    assert check_env_main([registered, "--exploits", "--fuzz-samples", "2", "--exploit-seeds", "2"]) == 0
    assert f"ok    {registered}" in capsys.readouterr().out


@pytest.mark.slow
def test_two_rollouts(registered, two_rollouts):
    """~50 s on 2 cores: each episode makes its environment, which connects to the server."""
    two_rollouts(registered, ROWS)
