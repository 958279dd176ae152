"""``python -m aidc.models.validate FORMAT PATH [SIGNATURE]``: can this artifact be served?

(Run apart from the service.)

Loading a model imports its framework (TensorFlow alone takes seconds) and runs the
framework's loader on bytes a user uploaded, so the models service does it in a
short-lived process of its own: exit 0 when the artifact loads (and, given a declared
signature, takes and returns what it declares: :func:`aidc.models.formats.check_signature`),
exit 2 with the reason on stderr when it does not. ``SIGNATURE`` is the signature's JSON,
or ``-`` to read it from stdin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from ..errors import AidcError
    from .formats import check_signature, validate

    fmt, path, *rest = argv
    try:
        validate(fmt, Path(path))
        if rest:
            text = sys.stdin.read() if rest[0] == "-" else rest[0]
            check_signature(fmt, Path(path), json.loads(text))
    except AidcError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Exception as e:  # the loader itself failed on these bytes
        print(f"the {fmt} artifact cannot be loaded: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
