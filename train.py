"""Train an LLM agent with RL: ``python train.py --config recipes/quickstart/config.yaml``.

Every flag: ``python train.py --help``. The loop itself is ``agentrl/loop.py``.
"""

import sys

if __name__ == "__main__":
    from agentrl.utils.interrupts import deferred_interrupt, interrupt_in

    try:
        with deferred_interrupt():  # torch loads here: a Ctrl-C inside its import would abort the process
            from agentrl.train_cli import main
        sys.exit(main(prog="train.py"))
    except BaseException as e:  # Ctrl-C before the run had its own handlers, perhaps wrapped by a library
        if isinstance(e, SystemExit) or interrupt_in(e) is None:
            raise
        print("train.py: interrupted", file=sys.stderr)
        sys.exit(130)
