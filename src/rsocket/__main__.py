"""``python -m rsocket``: the same as the ``rsocket`` console script."""

import sys

from .apps.cli import main

sys.exit(main())
