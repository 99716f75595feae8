"""``python -m nonstop demo``: see nonstop._coredemo (the command line grows in a later issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from ._coredemo import run

        return run()
    print("usage: python -m nonstop demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
