#!/usr/bin/env bash
# `make images`: build pix2pixhd-cpu:TAG and pix2pixhd-cuda:TAG from the Dockerfiles.
#   IMAGE_SOURCE=wheelhouse (default): offline/air-gapped. The base image is made with
#     debootstrap (base-image.sh) unless BASE_IMAGE names one; the pinned requirements
#     are built on this host into WHEELHOUSE with `pip wheel` (again only when setup.cfg's
#     pins change) and served on 127.0.0.1:WHEELHOUSE_PORT to a `docker build --network
#     host`, which installs them with --no-index. The wheels never enter the build context
#     or a layer; the two images share every layer but their metadata.
#   IMAGE_SOURCE=online: python:3.11-slim, torch from its wheel index, the rest from PyPI.
# Layers are cached by the engine between runs; dangling images left by a rebuild of
# these two images are removed. Concurrent runs on one machine wait for each other.
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE=${IMAGE_SOURCE:-wheelhouse}
TAG=${IMAGE_TAG:-local}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-$HOME/.cache/pix2pixhd/wheelhouse}
PORT=${WHEELHOUSE_PORT:-18765}
GIT_SHA=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export DOCKER_BUILDKIT=0  # the engine's classic builder: no buildx plugin needed

exec 9>"${TMPDIR:-/tmp}/pix2pixhd-images.lock"
flock 9
infra/docker/engine.sh

args=(--network host --build-arg "GIT_SHA=$GIT_SHA")
if [ "$SOURCE" = wheelhouse ]; then
  BASE=${BASE_IMAGE:-pix2pixhd-base:bookworm}
  [ -n "${BASE_IMAGE:-}" ] || infra/docker/base-image.sh "$BASE"
  mkdir -p "$WHEELHOUSE"
  reqs=$({ "$PYTHON" infra/docker/requirements.py setup.cfg mlops serve; echo "setuptools>=68"; echo wheel; })
  if [ "$reqs" != "$(cat "$WHEELHOUSE/.requirements" 2>/dev/null)" ]; then
    echo "wheelhouse: pip wheel into $WHEELHOUSE"
    # (pip's notes about index pages it skips are filtered out)
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE" -r <(echo "$reqs") 2> >(grep -v 'is ignored: it is neither' >&2)
    echo "$reqs" >"$WHEELHOUSE/.requirements"
  fi
  nodeps=$(grep -v '^#' infra/docker/requirements-no-deps.txt)
  if [ "$nodeps" != "$(cat "$WHEELHOUSE/.requirements-no-deps" 2>/dev/null)" ]; then
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELHOUSE" \
      -r infra/docker/requirements-no-deps.txt 2> >(grep -v 'is ignored: it is neither' >&2)
    echo "$nodeps" >"$WHEELHOUSE/.requirements-no-deps"
  fi
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$PORT" >/dev/null 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null' EXIT
  for _ in $(seq 50); do
    "$PYTHON" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null && break
    kill -0 $server 2>/dev/null || { echo "build-images.sh: cannot serve the wheelhouse on 127.0.0.1:$PORT" >&2; exit 1; }
    sleep 0.2
  done
  # TORCH_INDEX_URL is unused with a wheelhouse; one value for both files keeps their
  # layers identical (build arguments are part of the layer cache key)
  args+=(--build-arg "BASE_IMAGE=$BASE" --build-arg "WHEELHOUSE=http://127.0.0.1:$PORT/"
         --build-arg TORCH_INDEX_URL=unused)
elif [ "$SOURCE" != online ]; then
  echo "build-images.sh: IMAGE_SOURCE must be wheelhouse or online, not '$SOURCE'" >&2
  exit 2
fi

for variant in cpu cuda; do
  start=$(date +%s)
  log="${TMPDIR:-/tmp}/pix2pixhd-build-$variant.log"
  docker build "${args[@]}" -f "infra/docker/Dockerfile.$variant" \
    -t "pix2pixhd-$variant:$TAG" . >"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; echo "build-images.sh: building pix2pixhd-$variant failed (log: $log)" >&2; exit 1; }
  echo "pix2pixhd-$variant:$TAG built in $(( $(date +%s) - start )) s," \
    "$(docker image inspect -f '{{.Size}}' "pix2pixhd-$variant:$TAG" | awk '{printf "%.2f GB", $1 / 1e9}')"
done
for variant in cpu cuda requirements; do
  docker image prune --force --filter "label=org.opencontainers.image.title=pix2pixhd-$variant" >/dev/null
done
