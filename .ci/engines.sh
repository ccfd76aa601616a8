#!/usr/bin/env bash
# Container engines for the docker/podman backend tests (sourced by .ci/run):
# Debian's docker.io with gVisor (runsc) registered, and Podman's
# Docker-compatible API service. Idempotent: quick when they already run.
set -euo pipefail

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v runsc >/dev/null || missing+=(runsc)
command -v podman >/dev/null || missing+=(podman)
[ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# gVisor works as a Docker runtime here only with --network=none
# (FIELD-NOTES); --oci-seccomp makes it apply kiln's profile too.
mkdir -p /etc/docker
changed="$(python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
try:
    conf = json.load(open(path))
except (OSError, ValueError):
    conf = {}
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}
if conf.get("runtimes", {}).get("runsc") != want:
    conf.setdefault("runtimes", {})["runsc"] = want
    tmp = path + ".kiln-ci"
    json.dump(conf, open(tmp, "w"), indent=2)
    os.replace(tmp, path)
    print("yes")
PY
)"
if ! docker info >/dev/null 2>&1; then
  if [ ! -S /var/run/docker.sock ] || ! pidof dockerd >/dev/null; then
    # From /: a daemon must not keep a checkout as its working directory
    # (the checkout may be deleted while the daemon lives on).
    (cd / && setsid dockerd >/var/log/kiln-ci-dockerd.log 2>&1 < /dev/null &)
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
elif [ -n "$changed" ]; then
  kill -HUP "$(pidof dockerd)"
  sleep 1
fi
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' \
  || { echo "dockerd runs without the runsc runtime" >&2; exit 1; }

# Podman's API runs every container with its configured runtime: runc
# (crun 1.8 refuses this host's hybrid cgroup layout).
mkdir -p /etc/containers/containers.conf.d /run/podman
conf=/etc/containers/containers.conf.d/kiln.conf
want_conf=$'[engine]\nruntime = "runc"'
restart=""
if [ "$(cat "$conf" 2>/dev/null)" != "$want_conf" ]; then
  printf '%s\n' "$want_conf" >"$conf"
  restart=yes
fi
pidfile=/run/kiln-ci-podman.pid
ping() { curl -sf --max-time 5 --unix-socket /run/podman/podman.sock http://d/_ping >/dev/null; }
# A service started from a directory that was deleted since answers pings but
# its conmon cannot start containers ("Failed to get working directory"):
# start it again.
if [ -f "$pidfile" ] && readlink "/proc/$(cat "$pidfile")/cwd" 2>/dev/null | grep -q ' (deleted)$'; then
  restart=yes
fi
if [ -n "$restart" ] && [ -f "$pidfile" ]; then
  kill "$(cat "$pidfile")" 2>/dev/null || true
  sleep 1
fi
if [ -n "$restart" ] || ! ping; then
  (cd / && exec setsid podman system service --time=0 unix:///run/podman/podman.sock \
    >/var/log/kiln-ci-podman.log 2>&1 < /dev/null) &
  echo $! >"$pidfile"
  for _ in $(seq 60); do ping && break; sleep 0.5; done
fi
ping || { echo "podman's API service does not answer" >&2; exit 1; }
