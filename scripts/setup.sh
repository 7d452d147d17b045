#!/usr/bin/env bash
# Set up what postwarden and its tests need on a Debian machine: Debian packages (as root) and a
# Python virtual environment in .venv with postwarden installed in editable mode.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again (it skips what is there).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$here/.venv"

# Debian packages the tests use as real components and references (dovecot-core: the lab
# SASL auth server, postwarden.lab.dovecot; nftables: the ban backend, tested inside a
# network namespace; systemd-journal-remote: writes real journal files for the journal tests
# of logs watch); gcc, libc6-dev and python3-dev build the compiled modules of logs and policyd
# (scripts/build_compiled.py).
debs=(postfix pflogsumm dovecot-core redis-server postgrey opendkim opendkim-tools nftables
      systemd-journal-remote gcc libc6-dev python3-dev)

need_debs=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_debs+=("$pkg")
done
python3 -m venv --help >/dev/null 2>&1 || need_debs+=(python3-venv python3-pip)

if [ "${#need_debs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install Debian packages: ${need_debs[*]}" >&2
    exit 2
  fi
  # Keep package services from starting on install: the tests start only what they need,
  # from private config directories. Remove the guard afterwards only if we put it there.
  made_guard=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_guard=yes
  fi
  # "No configuration": no /etc/postfix/main.cf and no /etc/mailname are written.
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
  [ "$made_guard" = yes ] && rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -e "$here[test]"

# The compiled fast path of `postwarden logs summary` (docs/logs.md): rebuilt only when its
# sources changed (a no-op otherwise); without a C compiler, or if the build fails, it says so
# in one line and postwarden runs as pure Python.
"$venv/bin/python" "$here/scripts/build_compiled.py" || true
