"""The ``agentrl`` command. Each subcommand lives in its own module and is imported on use,
so ``agentrl --help`` stays fast and a missing optional dependency only affects its command."""

from __future__ import annotations

import importlib
import sys

from agentrl.utils.interrupts import deferred_interrupt, interrupt_in

# name -> ("module:function taking argv and returning an exit code", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("agentrl.train_cli:main", "train an agent with RL (same flags as train.py)"),
    "eval": ("agentrl.eval.cli:main", "evaluate an agent on held-out tasks"),
    "check-env": ("agentrl.env.cli:main", "check registered environments against the TextEnv contract"),
    "new-env": ("agentrl.env.new_env:main", "write an environment skeleton, its test, registration and recipe"),
    "serve": ("agentrl.engine.server:serve_main", "serve a model over HTTP with SGLang's native API"),
    "retriever": ("tools.retriever.server:main", "serve a corpus over the Search-R1 retrieval protocol"),
    "view": ("agentrl.view.cli:main", "open a run's rollouts or an evaluation's episodes in a local web page"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from agentrl import __version__

        print(f"agentrl {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"agentrl: unknown command {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        with deferred_interrupt():  # a Ctrl-C inside an extension's import would abort the process
            command = getattr(importlib.import_module(module), func)
        return int(command(rest) or 0)
    except Exception as e:  # a Ctrl-C that a library wrapped in an error of its own is still a Ctrl-C
        if interrupt_in(e) is None:
            raise
        print(f"agentrl {name}: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C that the command did not handle itself (while importing, say): no traceback
        print(f"agentrl {name}: interrupted", file=sys.stderr)
        return 130


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {n:<{width}}  {h}" for n, (_, h) in COMMANDS.items()]
    return "usage: agentrl COMMAND [ARGS...]   (agentrl COMMAND --help for details)\n\ncommands:\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
