"""The ``prefixkv`` command line: ``serve``, ``chat`` and ``bench`` (see :mod:`.commands`)."""

from prefixkv.cli.commands import main

__all__ = ["main"]
