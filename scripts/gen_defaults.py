"""Write postwarden's shipped table of Postfix defaults from an installed ``postconf``.

Security: runs the local ``postconf`` binary (argument lists, private temp directories)
through ``postwarden.postfix.defaults.probe``; reads only its output.
Standards: postconf(1).

Usage: ``python scripts/gen_defaults.py [--postconf PATH]`` writes
``src/postwarden/postfix/data/postfix-<mail_version>.json``. Run it on a machine with the
Postfix version to support (Debian 12 ships 3.7.11); see ``defaults.probe`` for what it asks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from postwarden.postfix.defaults import probe

DATA = Path(__file__).resolve().parent.parent / "src/postwarden/postfix/data"


def main() -> int:
    parser = argparse.ArgumentParser(description="Write a Postfix defaults table.")
    parser.add_argument("--postconf", default="/usr/sbin/postconf")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    table = probe(args.postconf)
    path = args.out / f"postfix-{table.mail_version}.json"
    path.write_text(json.dumps(table.to_json(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
