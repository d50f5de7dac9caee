#!/usr/bin/env bash
# Make sure a Docker Engine answers. Without an init system (this machine, CI), start
# Debian's `dockerd` in the background, installing docker.io with apt when it is missing.
# It runs with no bridge and no iptables rules: containers get the host network or none
# (`--network host` / `none`), never a bridge to other addresses. It keeps running after.
# Exit 0 when the engine answers, 1 with one line on stderr when it cannot be started.
set -uo pipefail
docker info >/dev/null 2>&1 && exit 0
fail() { echo "engine.sh: $*" >&2; exit 1; }
if ! command -v dockerd >/dev/null; then
  command -v apt-get >/dev/null || fail "no dockerd and no apt-get to install docker.io"
  [ "$(id -u)" = 0 ] || fail "dockerd is not installed; apt-get install docker.io needs root"
  { flock /tmp/apt.lock apt-get install -y --no-install-recommends docker.io >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 &&
      flock /tmp/apt.lock apt-get install -y --no-install-recommends docker.io >/dev/null 2>&1; }; } ||
    fail "apt-get install docker.io failed"
fi
command -v docker >/dev/null || fail "no docker client (apt-get install docker.io)"
[ "$(id -u)" = 0 ] || fail "the engine is not running and starting dockerd needs root"
LOG=${DOCKERD_LOG:-/tmp/pix2pixhd-dockerd.log}
nohup dockerd --iptables=false --ip6tables=false --bridge=none >"$LOG" 2>&1 &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  kill -0 $! 2>/dev/null || fail "dockerd exited: $(tail -n 1 "$LOG")"
  sleep 1
done
fail "dockerd did not answer within 60 s (log: $LOG)"
