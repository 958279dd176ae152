"""``aidc user add|list|remove|set-role|passwd``: manage the platform's users."""

from __future__ import annotations

import getpass
import json
import sys

from ..errors import AidcError, UsageError
from ..roles import ROLE_NAMES, describe
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    action = CommandGroup(sub, "user", "add, list and remove users", common,
                          description="Manage users.").action
    roles_help = "; ".join(f"{n}: {d}" for n, d in describe())

    a = action("add", "add a user", add, description=f"Roles: {roles_help}")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLE_NAMES, help="the user's role")
    a.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )

    ls = action("list", "list users and their roles", list_users)
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    rm = action("remove", "remove users (stops their servers)", remove)
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument(
        "--keep-home",
        action="store_true",
        help="keep the home folder (moved aside, owned by root) instead of deleting it",
    )
    rm.add_argument(
        "--even-last-admin",
        action="store_true",
        help="remove the last administrator too (when taking the platform down)",
    )

    sr = action("set-role", "change a user's role", set_role)
    sr.add_argument("name")
    sr.add_argument("role", choices=ROLE_NAMES)

    pw = action("passwd", "set a user's password", passwd)
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")


def read_password(from_stdin: bool) -> str:
    """One line from stdin, or a confirmed prompt on a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UsageError("the two passwords differ")
    else:
        raise UsageError("no terminal to ask for a password: pass it with --password-stdin")
    if len(password) < 8:
        raise UsageError("the password must have at least 8 characters")
    return password


def _users(args):
    """The platform's users (imported here: the hub machinery is slow to import)."""
    from ..hub.users import PlatformUsers
    from ..paths import DataDir

    return PlatformUsers(DataDir.from_arg(args.data_dir))


def add(args) -> int:
    users = _users(args)
    try:
        users.check_new(args.name)  # a taken name is said before a password is read
    except AidcError as e:
        users._audit("add", args.name, "failure", role=args.role, reason=str(e))
        raise
    password = read_password(args.password_stdin) if users.system_accounts else None
    record = users.add(args.name, args.role, password)
    print(f"added {record.name} ({record.role})")
    return 0


def list_users(args) -> int:
    records = _users(args).list()
    if args.json:
        print(json.dumps([r.__dict__ for r in records], indent=2))
        return 0
    print(f"{'NAME':<24} {'ROLE':<10} {'SERVER':<8} LAST ACTIVITY")
    for r in records:
        running = "running" if r.server_running else "-"
        print(f"{r.name:<24} {r.role or '-':<10} {running:<8} {r.last_activity or '-'}")
    return 0


def remove(args) -> int:
    """Remove each named user; one that cannot be removed does not stop the others."""
    users = _users(args)
    failed: list[AidcError] = []
    for name in args.names:
        try:
            kept = users.remove(name, keep_home=args.keep_home, last_admin=args.even_last_admin)
        except AidcError as e:
            if len(args.names) == 1:
                raise
            print(f"aidc: error: {e}", file=sys.stderr)
            failed.append(e)
            continue
        print(f"removed {name}" + (f"; home kept in {kept}" if kept else ""))
    return max((e.exit_code for e in failed), default=0)


def set_role(args) -> int:
    record = _users(args).set_role(args.name, args.role)
    print(f"{record.name} is now {record.role}")
    return 0


def passwd(args) -> int:
    users = _users(args)
    users.set_password(args.name, read_password(args.password_stdin))
    print(f"password of {args.name} changed")
    return 0
