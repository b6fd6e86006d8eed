#!/usr/bin/env bash
# Installs mdagent-hpc. Three parts, each run by whoever it is for (docs/deploy.md):
#   sudo bash scripts/install.sh --root    as root, once per machine: Debian packages (bubblewrap, the LAMMPS sandbox;
#                                          rsync and postgresql-client, for the server's backup and restore)
#   bash scripts/install.sh                as the account that runs mdagent (a user, or the server's service account):
#                                          the package into ./.venv; needs no root once --root has run
#   bash scripts/install.sh --client       on a laptop that only uses a server (MDAGENT_SERVER): the package, no
#                                          sandbox or services
#   bash scripts/install.sh --test         what the test suite needs too: pytest and ruff (as root also Debian's
#                                          lammps-examples, lammps-data and chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  ""|--root|--client|--test) ;;
  *) echo "usage: bash scripts/install.sh [--root | --client | --test]" >&2; exit 2 ;;
esac

missing() {  # the Debian packages of "$@" that are not installed
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}

packages=()
case "$mode" in
  --root)
    command -v bwrap >/dev/null || packages+=(bubblewrap)
    command -v rsync >/dev/null || packages+=(rsync)
    command -v pg_dump >/dev/null && command -v psql >/dev/null || packages+=(postgresql-client)
    ;;
  "") command -v bwrap >/dev/null || packages+=(bubblewrap) ;;
  --test)
    command -v bwrap >/dev/null || packages+=(bubblewrap)
    # the LAMMPS example inputs and potentials the test corpus is built from (tests/corpus.py), unless
    # MDAGENT_LAMMPS_EXAMPLES names another copy; Chromium, the headless browser the dashboard's tests drive
    [ -n "${MDAGENT_LAMMPS_EXAMPLES:-}" ] || mapfile -t -O "${#packages[@]}" packages < <(missing lammps-examples lammps-data)
    [ -x /usr/bin/chromium ] || packages+=(chromium)
    ;;
esac
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${packages[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    echo "missing Debian packages ${packages[*]}: as root, run \`sudo bash scripts/install.sh --root\`, then rerun" >&2
    exit 2
  fi
fi
if [ "$mode" = --root ]; then
  echo "Debian packages ready (bubblewrap, rsync, postgresql-client); next, as the account that runs mdagent:" \
    "bash scripts/install.sh"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
extras=""
[ "$mode" = --test ] && extras="[test]"
echo "== installing mdagent-hpc$extras into .venv"
# aiida-lammps asks for aiida-core's `atomic_tools` extra, which aiida-core 2.9 no longer has (its tools are
# plain dependencies now): pip's warning about it says nothing to act on, every other line is shown
.venv/bin/pip install -q --disable-pip-version-check -e ".$extras" 2>&1 | { grep -v "does not provide the extra 'atomic" || true; }

bin="$PWD/.venv/bin"
echo "installed $("$bin/mdagent" --version)"
echo "next: put it on your PATH (e.g. in ~/.profile): export PATH=\"$bin:\$PATH\""
if [ "$mode" = --client ]; then
  echo "then: export MDAGENT_SERVER=https://HOST:8765 (from your admin) and save your key in ~/.config/mdagent/key" \
    "(mode 600); \`mdagent runs\` lists your runs"
else
  echo "then: \`mdagent demo\` runs the whole loop here; the shared server: docs/deploy.md"
fi
