"""``aidc token NAME``: print a new API token for a user (as ``jupyterhub token`` does)."""

from __future__ import annotations



def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "token",
        parents=[common],
        help="print a new API token for a user",
        description="Create an API token with the user's own permissions and print it.",
    )
    p.add_argument("name")
    p.add_argument("--note", default="created with aidc token", help="note shown on the token page")
    p.add_argument("--expires-in", type=int, metavar="SECONDS", help="lifetime (default: no expiry)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..hub.users import PlatformUsers  # here: the hub machinery is slow to import
    from ..paths import DataDir

    users = PlatformUsers(DataDir.from_arg(args.data_dir))
    print(users.new_token(args.name, note=args.note, expires_in=args.expires_in))
    return 0
