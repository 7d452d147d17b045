#!/usr/bin/env bash
# postwarden's main job on the bundled example configurations, from a fresh Debian machine:
# set up (Debian packages and .venv), build the examples that start from Debian's own files,
# then audit each one and show the plan harden makes for the seed guide.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
bash scripts/setup.sh
"$here/.venv/bin/python" scripts/build_examples.py >/dev/null
pw="$here/.venv/bin/postwarden"

for example in examples/*/; do
  example=${example%/}
  echo "== postwarden audit -c $example"
  # Exit code 1 means findings at or above --fail-on (high); showing them is the point.
  "$pw" audit -c "$example" || [ $? -eq 1 ]
  echo
done

# What harden would change in the guide's configuration (a plan: nothing is written).
echo "== postwarden harden -c examples/guide --role mx,submission ... (plan only)"
"$pw" harden -c examples/guide --role mx,submission --hostname mail.example.org \
  --domain example.org --sasl dovecot --with policy --with milter
