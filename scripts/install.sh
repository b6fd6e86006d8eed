#!/usr/bin/env bash
# Installs mdagent-hpc into ./.venv, with bubblewrap (the LAMMPS sandbox) from Debian when missing.
# Usage: bash scripts/install.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing bubblewrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "bubblewrap (bwrap) is missing: install it as root (apt-get install bubblewrap), then rerun" >&2
    exit 2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
echo "== installing mdagent-hpc$extras into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".$extras"
