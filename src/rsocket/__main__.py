"""``python -m rsocket``: the same as the ``rsocket`` console script."""

import sys

from .cli import main

sys.exit(main())
