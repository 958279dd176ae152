"""``aidc whoami``: check a token against the platform (``AIDC_URL``/``AIDC_TOKEN``)."""

from __future__ import annotations

import json

from ..client import Client


def add_parser(sub, common) -> None:
    p = sub.add_parser("whoami", help="show who the current API token belongs to")
    p.add_argument("--url", help="platform URL (default $AIDC_URL)")
    p.add_argument("--token", help="API token (default $AIDC_TOKEN)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    me = Client(args.url, args.token).whoami()
    if args.json:
        print(json.dumps(me, indent=2, default=str))
    else:
        print(f"{me['name']} ({me.get('role') or me.get('kind')})")
    return 0
