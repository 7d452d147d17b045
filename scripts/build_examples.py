"""Build the example configurations that start from Debian's own files.

Security: see ``postwarden.postfix.debian``.
Standards: none.

Each ``examples/NAME/`` holding ``use-debian-main`` or ``use-debian-master`` gets its
main.cf / master.cf built from the installed Debian package (they are not committed:
.gitignore lists them). Run by scripts/demo.sh and by the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

from postwarden.errors import PostwardenError
from postwarden.postfix.debian import build, needs_debian

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> int:
    try:
        for recipe in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
            if needs_debian(recipe):
                for path in build(recipe, recipe):
                    print(f"built {path.relative_to(EXAMPLES.parent)}")
    except PostwardenError as exc:
        print(f"build_examples: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
