"""A real MCP server (the mcp package's MCPServer) for tests/env/adapters/test_mcp_tools.py.

``python mcp_server.py`` serves over stdio; ``python mcp_server.py http PORT`` over streamable HTTP on
127.0.0.1:PORT."""

import asyncio
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("shop")
PRICES = {"apple": 3, "pear": 5, "melon": 12}


@server.tool()
def price(item: str) -> int:
    """The price of one item in the shop, in dollars."""
    if item not in PRICES:
        raise ToolError(f"no such item: {item!r}; the shop sells {sorted(PRICES)}")
    return PRICES[item]


@server.tool()
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@server.tool()
async def wait(seconds: float) -> str:
    """Wait, then say so."""
    await asyncio.sleep(seconds)
    return "waited"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
