"""Which merge core this process uses: the compiled one when it is built, else its twin
(and the payload checks of the same kind, :func:`validate`).

``RSOCKET_NO_EXTENSIONS=1`` chooses the pure core (and silences the warning a
missing compiled core gives); type checkers always see the pure one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS

__all__ = ["IMPLEMENTATION", "module", "validate"]

# isort: off
if TYPE_CHECKING or NO_EXTENSIONS:
    from . import _buffer_py as module
    from ._validate_py import validate

    IMPLEMENTATION = "python"
else:
    try:
        from . import _buffer as module
        from ._validate import validate

        IMPLEMENTATION = "cython"
    except ImportError as exc:  # pragma: no cover - built without a compiler
        import importlib.util

        from . import _buffer_py as module
        from ._validate_py import validate

        IMPLEMENTATION = "python"
        _why = ("it was not built: no C compiler when rsocket was installed"
                if importlib.util.find_spec("rsocket._buffer") is None
                else f"it does not load: {exc}")
        logging.getLogger("rsocket.buffer").warning(
            "the compiled merge core is not available (%s); using the pure-Python core, "
            "about half as fast. Reinstall with a C compiler (gcc) present, or set "
            "RSOCKET_NO_EXTENSIONS=1 to choose the pure core and silence this.", _why,
        )
# isort: on
