#!/usr/bin/env bash
# Prepares a compose build that needs no image registry:
#   1. a base image made from Debian packages (a minimal bookworm with python3), imported
#      with `docker import`; kept when it exists already;
#   2. the pinned torch wheel, fetched by this machine's pip (its index, find-links and
#      certificates) into deploy/wheels/, which the Dockerfile installs from.
# Then build with `--build-arg BASE_IMAGE=<tag>` on the host network (see docs/compose.md).
#
# Usage: scripts/docker/prepare-local-build.sh [BASE_TAG]   (as root; needs debootstrap)
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), PYTHON (the pip to fetch torch
#      with; default python3), TORCH_VERSION (default 2.13.0).
set -euo pipefail

BASE_TAG="${1:-codistill-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
ROOT_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
WHEELS="$ROOT_DIR/deploy/wheels"
root=""
HOST_CA=/etc/ssl/certs/ca-certificates.crt

make_base() {
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    echo "base image $BASE_TAG: present, kept"
    return
  fi
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
  root="$(mktemp -d /var/tmp/codistill-base.XXXXXX)"
  trap 'rm -rf "$root" "$root.log"' EXIT
  echo "base image $BASE_TAG: debootstrap bookworm from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # Builds on this base fetch packages through the same network as the host, so they trust
  # the host's certificate bundle (pip verifies against it through PIP_CERT below).
  if [ -f "$HOST_CA" ]; then
    install -D -m 0644 "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  # No service starts while packages install in a build (as in Debian's own images).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_TAG" >/dev/null
  rm -rf "$root"
  echo "base image $BASE_TAG: imported"
}

fetch_torch() {
  if compgen -G "$WHEELS/torch-$TORCH_VERSION*.whl" >/dev/null; then
    echo "torch wheel: $(basename "$(compgen -G "$WHEELS/torch-$TORCH_VERSION*.whl" | head -1)") present, kept"
    return
  fi
  # The same torch `pip install torch==$TORCH_VERSION` finds on this machine; a CPU build where
  # the machine's index offers one (its local version sorts above the plain release).
  "$PYTHON" -m pip download -q --no-deps --only-binary :all: -d "$WHEELS" "torch==$TORCH_VERSION"
  echo "torch wheel: $(basename "$(compgen -G "$WHEELS/torch-$TORCH_VERSION*.whl" | head -1)") fetched"
}

make_base
fetch_torch
