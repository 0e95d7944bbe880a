"""``agentrl view RUN_OR_EVAL_DIR [MORE_DIRS...] [--port N] [--export report.html]``.

Serves the viewer's page for the folders given (a training run's ``--output-dir``, best with
``--save-debug-rollout-data``, or an evaluation's ``--output-dir``) until Ctrl-C, or with ``--export`` writes
it as one self-contained HTML file and exits. Several folders can be compared (two runs' evaluations
side by side).
"""

from __future__ import annotations

import argparse
import logging
import sys

from agentrl.view.data import Sources, ViewError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentrl view",
        description="A local web page over training runs and evaluations: curves, each rollout's groups, each "
        "episode turn by turn and token by token (loss mask, engine vs trainer logprobs), filters, search, "
        "side-by-side comparisons. Works offline; links keep the page's state.")
    p.add_argument("dirs", nargs="+", metavar="RUN_OR_EVAL_DIR",
                   help="the --output-dir of a training run or of an evaluation (several: compare them)")
    p.add_argument("--port", type=_port, default=8765, help="port to serve on (0: any free port) (default: 8765)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 shares it on the network)")
    p.add_argument("--export", metavar="FILE.html",
                   help="write one self-contained HTML file with every episode in it, and exit")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    return p


def _port(text: str) -> int:
    """A TCP port number, 0 to 65535 (argparse's type: a bad one is a usage error, exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free one); got {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sources = Sources(args.dirs)
    except ViewError as e:
        print(f"agentrl view: {e}", file=sys.stderr)
        return 2
    if args.export:
        from agentrl.view.export import export_html

        try:
            path = export_html(sources, args.export)
        except OSError as e:  # a folder, or a place that cannot be written
            print(f"agentrl view: --export {args.export}: cannot write it ({e.strerror or e})", file=sys.stderr)
            return 2
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    from agentrl.view.server import make_server

    try:
        server = make_server(sources, args.host, args.port)
    except OSError as e:
        print(f"agentrl view: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
              "pick another --port (0: any free one)", file=sys.stderr)
        return 2
    print(f"agentrl view: serving {', '.join(s.name for s in sources.sources)} at {server.url} (Ctrl-C to stop)",
          flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
