"""``python -m ssmkit``: the same command line as the ``ssmkit`` script."""

import sys

from .cli import main

sys.exit(main())
