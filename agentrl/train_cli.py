"""``agentrl train`` / ``python train.py``: parse flags, validate, run the loop."""

from __future__ import annotations

import errno
import logging
import signal
import sys
from typing import Any

from agentrl.cluster.trainer_group import TrainerRankFailed
from agentrl.config import ConfigError, parse_args, validate
from agentrl.engine.base import EngineError
from agentrl.rollout.signal import RolloutsFailed
from agentrl.utils.interrupts import deferred_interrupt, interrupt_in


def main(argv: list[str] | None = None, prog: str = "agentrl train") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with deferred_interrupt():  # validating imports libraries (environments, tokenizers): a Ctrl-C waits for it
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
    try:
        with deferred_interrupt():  # torch and transformers load here: a Ctrl-C inside their import would abort
            from agentrl.loop import train

        try:
            summary = train(cfg)
        except Exception as e:  # a library that wrapped a Ctrl-C's KeyboardInterrupt (transformers' lazy imports do)
            interrupt = interrupt_in(e)
            if interrupt is None:
                raise
            raise interrupt from None
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM, or one before the first rollout: stopped at once
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{prog}: stopped at once by {signal_words(signum)}{_resume_hint(cfg)}", file=sys.stderr)
        return 128 + signum
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
    except OSError as e:  # a full disk or a read-only folder: which file, why, and where --load goes on
        from agentrl.checkpoint import CheckpointWriteError

        if e.errno not in WRITE_ERRNOS and not isinstance(e, CheckpointWriteError):
            raise
        logging.getLogger(__name__).debug("write failure", exc_info=True)
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"{prog}: cannot write the run's files: {what}{_resume_hint(cfg)}", file=sys.stderr)
        return 1
    stopped = summary.get("stopped") or {}
    if stopped.get("signal"):  # the first Ctrl-C or SIGTERM: the step finished and was saved
        signum = signal.Signals[stopped["signal"]]
        print(f"{prog}: stopped by {signal_words(signum)} after rollout {stopped['after_rollout']} of "
              f"{stopped['num_rollout']}{_resume_hint(cfg)}", file=sys.stderr)
        return 128 + signum
    return 0


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})
"""Errors of writing the run's files (metrics, checkpoints, plots, weights for the engine): one line, not a traceback."""


def signal_words(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


def _resume_hint(cfg: Any) -> str:
    """Where ``--load`` goes on from: the newest complete checkpoint in ``--save``."""
    from agentrl.checkpoint import last_checkpoint

    ckpt = last_checkpoint(cfg.checkpoint.save)
    return f"; --load {ckpt} goes on from there" if ckpt else "; no checkpoint to go on from"


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
