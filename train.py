"""Train an LLM agent with RL: ``python train.py --config recipes/quickstart/config.yaml``.

Every flag: ``python train.py --help``. The loop itself is ``agentrl/loop.py``.
"""

import sys

from agentrl.train_cli import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
