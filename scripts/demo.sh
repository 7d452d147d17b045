#!/usr/bin/env bash
# postwarden's main job on the bundled example configurations, from a fresh Debian machine:
# set up (Debian packages and .venv), then check each example as Postfix would read it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
bash scripts/setup.sh
pw="$here/.venv/bin/postwarden"

for example in examples/*/; do
  example=${example%/}
  echo "== postwarden config check -c $example"
  # Exit code 1 means findings at or above --fail-on; that is the point of the demo.
  "$pw" config check -c "$example" || [ $? -eq 1 ]
  echo
done
echo "== postwarden config show -c examples/hardened-mx -P (what each service really uses)"
"$pw" config show -c examples/hardened-mx -P -x
