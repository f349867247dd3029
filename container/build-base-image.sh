#!/usr/bin/env bash
# Builds a local stand-in for `python:3.11-slim` from Debian bookworm's own packages, so that the
# Dockerfile builds unchanged on machines that reach Debian's archive but no container registry.
#
# The image is tagged docker.io/library/python:3.11-slim, the name podman resolves `FROM
# python:3.11-slim` to, so no registry is ever asked. It is built only when that image is missing;
# a real one (pulled on a machine that has a registry) is used as it is.
#
# Like the real image: Python 3.11 (bookworm's python3 *is* 3.11), `python`, `python3`, `pip` and
# `pip3` in /usr/local/bin, `pip install` as root allowed (no PEP 668 marker), ca-certificates,
# netbase and tzdata, LANG=C.UTF-8, CMD ["python3"], and no docs, man pages or translations.
# Unlike it: Python is Debian's build, not one compiled from python.org sources.
#
# Usage: container/build-base-image.sh            (needs root, podman and debootstrap)
# Env:   BASE_IMAGE (default docker.io/library/python:3.11-slim), DEBIAN_MIRROR, CONTAINERS_CONF
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

say() { printf '==> %s\n' "$*" >&2; }

if podman image exists "$BASE_IMAGE"; then
  origin=$(podman image inspect --format '{{ index .Labels "io.duvo.stand-in" }}' "$BASE_IMAGE" 2>/dev/null || true)
  say "base image $BASE_IMAGE is present (${origin:-not a local stand-in}); not rebuilding"
  exit 0
fi

work=$(mktemp -d /var/tmp/duvo-base.XXXXXX)
root="$work/rootfs"
cleanup() {
  # Anything still mounted in the chroot is unmounted before the tree is removed.
  umount "$root/proc" 2>/dev/null || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

say "debootstrap $SUITE (minbase + python3, pip, venv) from $DEBIAN_MIRROR: about 2 minutes"
started=$SECONDS
if ! debootstrap --variant=minbase \
      --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
      "$SUITE" "$root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1; then
  tail -n 40 "$work/debootstrap.log" >&2
  # debootstrap keeps its own detailed log inside the target.
  tail -n 40 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
  say "debootstrap failed"
  exit 1
fi
say "debootstrap done in $((SECONDS - started)) s"

# The same sources as Debian's own images, so that security updates apply now and later.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# What Debian's -slim images configure: dpkg leaves out docs (but copyrights), man pages and
# translations, and apt keeps no package cache.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF

say "applying $SUITE-updates and $SUITE-security"
mount -t proc proc "$root/proc"
if ! chroot "$root" /bin/sh -c \
    'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get -y -q -o Dpkg::Options::=--force-confold upgrade' \
    >"$work/upgrade.log" 2>&1; then
  tail -n 40 "$work/upgrade.log" >&2
  say "apt-get upgrade in the base image failed"
  exit 1
fi
umount "$root/proc"

say "making it look like python:3.11-slim"
# The real image's Python is in /usr/local/bin and installs packages as root without complaint.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip3"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
chroot "$root" python --version >/dev/null
chroot "$root" pip --version >/dev/null
# Slim: what dpkg.cfg.d/docker excludes from now on, removed from what debootstrap installed.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
       "$root"/usr/share/lintian/* "$root"/usr/share/groff/*
# Nothing of this host and no caches: the engine provides resolv.conf, hosts and hostname.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
       "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache "$root"/debootstrap
rm -f "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/machine-id"
find "$root" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +

say "importing the tree as $BASE_IMAGE"
tar --numeric-owner --xattrs --acls -C "$root" -c . |
  podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHON_VERSION=3.11' \
    --change 'LABEL io.duvo.stand-in="python:3.11-slim built from Debian bookworm packages by container/build-base-image.sh"' \
    --change 'CMD ["python3"]' \
    --message "local stand-in for python:3.11-slim (debootstrap $SUITE)" \
    - "$BASE_IMAGE" >/dev/null
podman run --rm --network none "$BASE_IMAGE" python -c 'import sys, ssl, sqlite3, venv; assert sys.version_info[:2] == (3, 11)'
say "base image ready: $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec)B) in $((SECONDS - started)) s"
