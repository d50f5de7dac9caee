#!/usr/bin/env bash
# A python3.11 base image without a container registry: Debian bookworm's own packages,
# bootstrapped with debootstrap from the mirror this machine's apt already uses, imported
# with `docker import`. Use it as BASE_IMAGE when `python:3.11-slim` cannot be pulled.
#   infra/docker/base-image.sh [TAG]      (default pix2pixhd-base:bookworm; no-op if present)
# DEBIAN_MIRROR overrides the mirror read from /etc/apt/sources.list{,.d}.
set -euo pipefail
TAG=${1:-pix2pixhd-base:bookworm}
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG present"
  exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap

apt_mirror() {  # the first non-security Debian URI of the host's apt sources
  {
    { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true; } | awk '{for (i = 2; i <= NF; i++) print $i}'
    { grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true; } |
      awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {print $i; break}}'
  } | grep -v -e security -e '^$' | head -n 1 || true
}
MIRROR=${DEBIAN_MIRROR:-$(apt_mirror)}
[ -n "$MIRROR" ] || { echo "base-image.sh: no Debian mirror in the apt sources; set DEBIAN_MIRROR" >&2; exit 2; }

ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/pix2pixhd-rootfs.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT
# python3.11 with venv (pip comes from ensurepip's bundled wheel), TLS roots, OpenMP
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,libgomp1 \
  bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -n 20 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"
# no package caches, lists, docs or locales in the image
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
  "$ROOTFS"/var/log/*.log
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "base image $TAG built from Debian bookworm"
