"""``agentrl train`` / ``python train.py``: parse flags, validate, run the loop."""

from __future__ import annotations

import logging
import sys

from agentrl.config import ConfigError, parse_args, validate


def main(argv: list[str] | None = None, prog: str = "agentrl train") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv, prog=prog)
        problems = validate(cfg)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    from agentrl.loop import train

    train(cfg)
    return 0
