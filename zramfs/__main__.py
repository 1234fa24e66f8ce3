"""`python -m zramfs`: the same as the `zramfs` console script (the daemon starts this way)."""

import sys

from .cli import main

sys.exit(main())
