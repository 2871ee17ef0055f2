"""Build script: declares the compiled core, ``rsocket._buffer`` and the
payload checks it calls, ``rsocket._validate`` (Cython).

``RSOCKET_NO_EXTENSIONS=1`` (also ``true``/``yes``) builds the pure-Python
package. Otherwise the extension is built, and a failed compile (no compiler,
no headers) falls back to the pure core with one clear line, unless
``RSOCKET_BUILD_EXTENSION=yes``, which makes it an error (release builds).
Cython's directives live in the ``.pyx`` header; everything else in
``pyproject.toml``.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _compat():
    """``rsocket._compat`` (stdlib only), without importing the package."""
    path = Path(__file__).parent / "src" / "rsocket" / "_compat.py"
    spec = importlib.util.spec_from_file_location("_rsocket_compat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compat = _compat()
NO_EXTENSIONS = compat.NO_EXTENSIONS
REQUIRED = compat.env_flag("RSOCKET_BUILD_EXTENSION")


class OptionalBuildExt(build_ext):
    """Builds the extension if it can; else falls back to the pure core, saying so."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing...
            self._fallback(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        if REQUIRED:
            raise exc
        print(f"*** rsocket: compiled core not built ({exc}); installing the pure-Python core "
              "(RSOCKET_BUILD_EXTENSION=yes makes this an error)", file=sys.stderr)


def extensions():
    if NO_EXTENSIONS:
        print("*** rsocket: RSOCKET_NO_EXTENSIONS set, pure-Python build", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRED:
            raise
        print("*** rsocket: Cython not available, pure-Python build", file=sys.stderr)
        return []
    exts = [Extension(f"rsocket.{name}", [f"src/rsocket/{name}.pyx"], optional=not REQUIRED)
            for name in ("_validate", "_buffer")]
    return cythonize(exts, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
