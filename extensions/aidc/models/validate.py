"""``python -m aidc.models.validate FORMAT PATH``: can this artifact be loaded? (run apart from the service).

Loading a model imports its framework (TensorFlow alone takes seconds) and runs the
framework's loader on bytes a user uploaded, so the models service does it in a
short-lived process of its own: exit 0 when the artifact loads, exit 2 with the reason
on stderr when it does not.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from ..errors import AidcError
    from .formats import validate

    fmt, path = argv
    try:
        validate(fmt, Path(path))
    except AidcError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Exception as e:  # the loader itself failed on these bytes
        print(f"the {fmt} artifact cannot be loaded: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
