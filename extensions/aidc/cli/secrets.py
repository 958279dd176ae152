"""``aidc secrets set|list|delete``: your secrets for jobs (same client as ``aidc.secrets``).

``set`` reads the value from standard input, never from the command line, where it
would stay in the shell's history and show in ``ps`` to every user of the machine::

    printf %s "$HF_TOKEN" | aidc secrets set HF_TOKEN
    aidc secrets set HF_TOKEN            # at a terminal: asks, without echoing
"""

from __future__ import annotations

import getpass
import json
import sys

from .. import secrets as api
from ..errors import UsageError
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    group = CommandGroup(sub, "secrets", "secrets your jobs get as environment variables", common)
    action = group.action
    s = action("set", "store a secret (its value read from standard input)", set_)
    s.add_argument("name", metavar="NAME", help="the secret's name, also its variable's in jobs")
    # only to refuse it with a message that says why (argparse would say "unrecognized")
    s.add_argument("value", nargs="*", help="(refused: give the value on standard input)")
    ls = action("list", "your secrets' names and times (never their values)", list_)
    ls.add_argument("--json", action="store_true")
    d = action("delete", "remove a secret", delete)
    d.add_argument("name", metavar="NAME")


def read_value(name: str) -> str:
    """The value from standard input: asked for at a terminal (not echoed), else all of it
    up to its end, without one final line break (as ``echo`` and here-strings add one)."""
    if sys.stdin is None:
        raise UsageError(f"no standard input to read the value of {name} from")
    if sys.stdin.isatty():
        return getpass.getpass(f"value of {name} (not shown): ")
    value = sys.stdin.read()
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def set_(args) -> int:
    if args.value:
        raise UsageError(
            "a secret's value is never an argument (arguments stay in your shell's history and "
            "show in `ps` to everyone on the machine): give it on standard input, e.g. "
            f"printf %s \"$VALUE\" | aidc secrets set {args.name}")
    value = read_value(args.name)
    if not value:
        raise UsageError(f"standard input was empty: no value for {args.name}")
    s = api.set(args.name, value)
    state = "stored" if s["created"] == s["updated"] else "replaced"
    print(f"{state} secret {s['name']} (jobs get it with --secret {s['name']})")
    return 0


def list_(args) -> int:
    found = api.list()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no secrets (`aidc secrets set NAME` stores one)", file=sys.stderr)
    for s in found:
        print(f"{s['name']:<32} created {s['created']}  updated {s['updated']}")
    return 0


def delete(args) -> int:
    api.delete(args.name)
    print(f"deleted secret {args.name}")
    return 0
