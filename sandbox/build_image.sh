#!/usr/bin/env bash
# Build the sandbox image (IMAGE, default rlm-sandbox:latest).
#
# BASE_IMAGE (default python:3.12-slim) is pulled when a registry is reachable. Otherwise
# (or with OFFLINE=1) a minimal Debian rootfs with python3 is made with debootstrap from
# Debian's package mirror and imported as rlm-sandbox-base:bookworm, then used as the base.
set -euo pipefail

IMAGE="${IMAGE:-rlm-sandbox:latest}"
BASE_IMAGE="${BASE_IMAGE:-python:3.12-slim}"
OFFLINE_BASE="${OFFLINE_BASE:-rlm-sandbox-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
here="$(cd "$(dirname "$0")" && pwd)"

log() { echo "build_image: $*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_offline_base() {
  if have_image "$OFFLINE_BASE"; then
    log "offline base $OFFLINE_BASE already present"
    return
  fi
  command -v debootstrap >/dev/null || {
    log "debootstrap missing: apt-get install -y debootstrap"; exit 1; }
  rootfs="$(mktemp -d /tmp/rlm-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $SUITE into $rootfs (about 30 s)"
  debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$MIRROR" >/dev/null
  # Trim what a REPL never needs; keeps the image and the idle sandbox small.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
         "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import - "$OFFLINE_BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "imported $OFFLINE_BASE"
}

# The image is labelled with a hash of what goes into it; an image with the same hash is
# current and is not rebuilt (FORCE=1 rebuilds anyway).
source_hash="$(cat "$here/Dockerfile" "$here/protocol.py" "$here/worker.py" | sha256sum | cut -c1-16)"
current="$(docker image inspect -f '{{ index .Config.Labels "rlm-py.source-hash" }}' "$IMAGE" 2>/dev/null || true)"
if [[ "${FORCE:-0}" != "1" && "$current" == "$source_hash" ]]; then
  log "$IMAGE is current (source $source_hash)"
  exit 0
fi

base="$BASE_IMAGE"
if [[ "${OFFLINE:-0}" == "1" ]]; then
  build_offline_base; base="$OFFLINE_BASE"
elif ! have_image "$BASE_IMAGE" && ! timeout 60 docker pull "$BASE_IMAGE" >/dev/null 2>&1; then
  log "cannot pull $BASE_IMAGE: using an offline Debian base"
  build_offline_base; base="$OFFLINE_BASE"
fi

log "building $IMAGE from $base"
docker build -q --network none --build-arg "BASE_IMAGE=$base" \
  --label "rlm-py.source-hash=$source_hash" -t "$IMAGE" -f "$here/Dockerfile" "$here" >/dev/null
docker run --rm --network none "$IMAGE" python3 -c "import sys; print('sandbox python', sys.version.split()[0])"
