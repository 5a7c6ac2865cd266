"""``python -m node.cli``: the ``ainode`` command line (used where the console script is not on the PATH)."""

import sys

from node.cli import main

sys.exit(main())
