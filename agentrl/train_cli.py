"""``agentrl train`` / ``python train.py``: parse flags, validate, run the loop."""

from __future__ import annotations

import logging
import sys

from agentrl.cluster.trainer_group import TrainerRankFailed
from agentrl.config import ConfigError, parse_args, validate
from agentrl.engine.base import EngineError
from agentrl.rollout.signal import RolloutsFailed


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
    if cfg.group.dry_run:  # the layout and its memory per GPU; nothing loads
        from agentrl.train.estimate import dry_run_report

        print(dry_run_report(cfg))
        return 0
    from agentrl.loop import train

    try:
        train(cfg)
    except _input_errors() as e:  # found while loading what the flags name: say what, not where in agentrl
        logging.getLogger(__name__).debug("run setup failed", exc_info=True)
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except EngineError as e:  # servers that do not answer, or an engine that failed a whole rollout
        logging.getLogger(__name__).debug("engine failure", exc_info=True)
        print(f"{prog}: engine error: {e}", file=sys.stderr)
        return 1
    except RolloutsFailed as e:  # a reward function, environment or tool that fails every episode
        logging.getLogger(__name__).debug("rollouts failed", exc_info=True)
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except TrainerRankFailed as e:  # a rank actor of the trainer group died or raised: which one, in one line
        logging.getLogger(__name__).debug("trainer rank failure", exc_info=True)
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors about the run's inputs (folders, data rows, demonstrations, model folder, environment id, hook path,
    held-out tasks, an optional dependency they need): their message names the input and the fix, so the command
    prints it alone."""
    from agentrl.checkpoint import CheckpointError
    from agentrl.data.demos import DemoError
    from agentrl.data.prompts import DataError
    from agentrl.env.registry import EnvNotFoundError
    from agentrl.eval.tasks import TaskError
    from agentrl.models import ModelNotFoundError
    from agentrl.utils.extras import MissingExtra
    from agentrl.utils.imports import HookLoadError

    return (ConfigError, CheckpointError, DataError, DemoError, EnvNotFoundError, TaskError, ModelNotFoundError,
            HookLoadError, MissingExtra)
