"""Build script: declares the optional compiled core ``rsocket._buffer``.

The extension is built by default. ``RSOCKET_NO_EXTENSIONS=1`` (also ``true``/``yes``)
skips it; a missing compiler or Cython leaves a working pure-Python install and says so
once. Everything else lives in ``pyproject.toml``.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("RSOCKET_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True


class OptionalBuildExt(build_ext):
    """Builds the extension if it can; falls back to the pure core with one clear line."""

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
        print(
            f"*** rsocket: compiled core not built ({exc}); installing the pure-Python core",
            file=sys.stderr,
        )


def extensions():
    if NO_EXTENSIONS:
        print("*** rsocket: RSOCKET_NO_EXTENSIONS set, pure-Python build", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("*** rsocket: Cython not available, pure-Python build", file=sys.stderr)
        return []
    from setuptools import Extension

    ext = Extension("rsocket._buffer", ["src/rsocket/_buffer.pyx"], optional=True)
    return cythonize(
        [ext],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "embedsignature": True,
        },
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
