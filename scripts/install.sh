#!/usr/bin/env bash
# Installs mdagent-hpc into ./.venv, with bubblewrap (the LAMMPS sandbox) from Debian when missing.
# Usage: bash scripts/install.sh [--test]   (--test adds what the test suite needs: pytest and ruff, and Debian's
# lammps-examples and lammps-data for the test corpus, and chromium for the dashboard's browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  ""|--test) ;;
  *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
esac

# Debian packages: bubblewrap always; with --test also the LAMMPS example inputs and potentials the test corpus
# is built from (tests/corpus.py).
packages=()
command -v bwrap >/dev/null || packages+=(bubblewrap)
if [ "${1:-}" = "--test" ] && [ -z "${MDAGENT_LAMMPS_EXAMPLES:-}" ]; then  # that variable names another copy
  for pkg in lammps-examples lammps-data; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || packages+=("$pkg")
  done
fi
# with --test also Chromium, the headless browser the dashboard's tests drive (Playwright uses it, downloads none)
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then packages+=(chromium); fi
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${packages[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    echo "missing Debian packages ${packages[*]}: install them as root (apt-get install ${packages[*]}), then rerun" >&2
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
