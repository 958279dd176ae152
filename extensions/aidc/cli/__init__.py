"""The ``aidc`` command. One sub-module per command group; :func:`main` is the entry point."""

from .main import main

__all__ = ["main"]
