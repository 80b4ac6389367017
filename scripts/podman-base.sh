#!/usr/bin/env bash
# The base image of the podman image test (tests/test_image_podman.py), made with no registry:
# a Debian 12 minbase root filesystem with python3 (mmdebstrap, from Debian's mirror), imported
# into podman as $NIMBUILD_BASE_IMAGE. The tarball is cached, keyed by the mmdebstrap command and
# the ISO week (so it picks up Debian's security updates once a week), in $NIMBUILD_BASE_CACHE.
# Needs root (mmdebstrap's default mode), podman and mmdebstrap; .ci/run installs them.
set -euo pipefail
IMAGE=${NIMBUILD_BASE_IMAGE:-localhost/nimbuild-base:bookworm}
CACHE=${NIMBUILD_BASE_CACHE:-/var/cache/nimbuild}
ARGS=(--variant=minbase --include=python3,python3-venv,ca-certificates bookworm)
key=$(printf '%s\n' "${ARGS[@]}" "$(date -u +%G-W%V)" | sha256sum | cut -c1-16)
tar="$CACHE/base-$key.tar"
if podman image exists "$IMAGE" && [ "$(podman image inspect --format '{{index .Labels "io.nimbuild.base-key"}}' "$IMAGE" 2>/dev/null)" = "$key" ]; then
  echo "podman-base: $IMAGE is up to date (key $key)"
  exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$tar" ]; then
  start=$(date +%s)
  echo "podman-base: mmdebstrap ${ARGS[*]} (a few minutes)"
  # mmdebstrap picks the output format from the name: keep the .tar suffix on the partial file
  mmdebstrap --quiet "${ARGS[@]}" "$CACHE/partial-$key.tar"
  mv "$CACHE/partial-$key.tar" "$tar"
  echo "podman-base: made $tar in $(( $(date +%s) - start )) s"
  find "$CACHE" -name 'base-*.tar' ! -name "base-$key.tar" -delete
fi
podman import --change "LABEL io.nimbuild.base-key=$key" "$tar" "$IMAGE" >/dev/null
echo "podman-base: imported $tar as $IMAGE"
