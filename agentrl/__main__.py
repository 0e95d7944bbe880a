"""``python -m agentrl``: the ``agentrl`` command, where its script is not on the PATH."""

import sys

from agentrl.cli import main

if __name__ == "__main__":
    sys.exit(main())
