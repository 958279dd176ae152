"""How a command group declares its actions: ``aidc GROUP ACTION [options]``.

Every group (``jobs``, ``models``, ``data``, ``user``, ``server``...) has the same shape:
a subcommand whose actions each take the common options (``--data-dir``) and name the
function that handles them. Declaring them through :class:`CommandGroup` keeps that shape
in one place, so a new group reads like the others and ``aidc GROUP --help`` lists its
actions the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class CommandGroup:
    """``aidc NAME ACTION``: the group's parser and a way to add its actions."""

    def __init__(self, sub, name: str, helptext: str, common: argparse.ArgumentParser | None,
                 **kwargs):
        self.parser = sub.add_parser(name, help=helptext, **kwargs)
        self.actions = self.parser.add_subparsers(dest=f"{name}_command", metavar="ACTION",
                                                  required=True)
        self.common = common

    def action(self, name: str, helptext: str, handler: Callable[[argparse.Namespace], int],
               **kwargs) -> argparse.ArgumentParser:
        """An action's parser, with the common options; ``handler(args)`` runs it."""
        parents = [self.common] if self.common is not None else []
        p = self.actions.add_parser(name, parents=parents, help=helptext, **kwargs)
        p.set_defaults(handler=handler)
        return p

    def group(self, name: str, helptext: str) -> "CommandGroup":
        """A nested group (``aidc jobs schedule ACTION``)."""
        return CommandGroup(self.actions, name, helptext, self.common,
                            parents=[self.common] if self.common is not None else [])
