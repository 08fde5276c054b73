"""The ``hyperllama`` command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hyperllama-cli")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0"
