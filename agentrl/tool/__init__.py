"""Tools as plain typed functions: JSON schemas, tool-call parsers, and async execution.

Example::

    >>> import asyncio
    >>> from agentrl.tool import HermesParser, ToolExecutor
    >>> def echo(text: str) -> str:
    ...     '''Repeat the text.
    ...
    ...     Args:
    ...         text: What to repeat.
    ...     '''
    ...     return text
    >>> calls = HermesParser().parse('<tool_call>{"name": "echo", "arguments": {"text": "hi"}}</tool_call>')
    >>> [r.to_message() for r in asyncio.run(ToolExecutor([echo]).execute(calls))]
    [{'role': 'tool', 'name': 'echo', 'content': 'hi'}]
"""

from agentrl.tool.executor import ERROR_KINDS, ToolExecutor, ToolResult, summarize
from agentrl.tool.parsers import PARSERS, HermesParser, TagParser, ToolCall, ToolCallParser, get_parser
from agentrl.tool.schema import function_schema, parse_docstring, tool_name, type_schema
from agentrl.tool.validation import ArgumentError, validate_arguments

__all__ = [
    "ERROR_KINDS",
    "PARSERS",
    "ArgumentError",
    "HermesParser",
    "TagParser",
    "ToolCall",
    "ToolCallParser",
    "ToolExecutor",
    "ToolResult",
    "function_schema",
    "get_parser",
    "parse_docstring",
    "summarize",
    "tool_name",
    "type_schema",
    "validate_arguments",
]
