#!/usr/bin/env bash
# Podman for the container-image test (integration/test_container_image.py), with no registry:
# Debian's podman and buildah, a config that works on this kind of machine, and two local base
# images made from Debian's own packages:
#   localhost/debian:bookworm           debootstrap --variant=minbase, imported with podman import
#   docker.io/library/python:3.11-slim  a stand-in for the official image: Debian's python3.11
#                                       as a venv in /usr/local, so `python` and `pip` are on
#                                       PATH, and ca-certificates
# so the Dockerfile builds unchanged with `podman build --pull=never`.
#
# Idempotent: each step is skipped when its result is already there. One line per step goes to
# stderr. stdout is the environment podman needs here (export lines, for
# `eval "$(bash .ci/podman.sh)"`); the same lines are written to $MODERATOR_PODMAN_ROOT/env, which
# the test reads when CONTAINERS_CONF is not set. docs/container.md explains each setting.
#
# Everything podman keeps (storage, run state, temporary files) is under MODERATOR_PODMAN_ROOT
# (default /var/tmp/moderator-podman), never in /var/lib/containers.
set -euo pipefail

root="${MODERATOR_PODMAN_ROOT:-/var/tmp/moderator-podman}"
debian_image="localhost/debian:bookworm"
python_image="docker.io/library/python:3.11-slim"
started=$SECONDS

step() { printf 'podman.sh: %s (%ss)\n' "$*" "$((SECONDS - started))" >&2; }

# 1. Packages. crun is installed (podman depends on an OCI runtime) but not used: see below.
# catatonit is the init process of `podman run --init` (docs/container.md, "Signals").
if ! command -v podman >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
  || ! command -v runc >/dev/null 2>&1 || ! dpkg -s catatonit >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends podman buildah runc crun fuse-overlayfs \
    slirp4netns uidmap debootstrap containernetworking-plugins iptables catatonit >&2
  step "installed podman and buildah from Debian"
else
  step "podman already installed"
fi

# 2. Configuration. runc, because crun fails here with "cgroups in hybrid mode not supported";
# cgroupfs and file events, because there is no systemd or journald; explicit ulimits, because
# containers fail to set their rlimits without them.
mkdir -p "$root/storage" "$root/run" "$root/tmp"
cat >"$root/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$root/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$root/storage"
runroot = "$root/run"
EOF
export CONTAINERS_CONF="$root/containers.conf"
export CONTAINERS_STORAGE_CONF="$root/storage.conf"
export TMPDIR="$root/tmp"
cat >"$root/env" <<EOF
export CONTAINERS_CONF=$CONTAINERS_CONF
export CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF
export TMPDIR=$TMPDIR
EOF
step "wrote $root/containers.conf, $root/storage.conf and $root/env"

# 3. The Debian base image, from the mirror apt already uses.
if podman image exists "$debian_image"; then
  step "$debian_image already present"
else
  mirror="$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$root/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$root/debootstrap.log" 2>&1 \
    || { tail -n 20 "$root/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  step "debootstrap bookworm from $mirror"
  tar -C "$rootfs" -c . | podman import --quiet - "$debian_image" >/dev/null
  rm -rf "$rootfs"
  step "imported $debian_image"
fi

# 4. The stand-in python:3.11-slim (apt over plain HTTP, as on the host: no CA bundle needed).
if podman image exists "$python_image"; then
  step "$python_image already present"
else
  mkdir -p "$root/context"
  podman build --pull=never --layers=false --tag "$python_image" --file - "$root/context" \
    >"$root/python-build.log" 2>&1 <<EOF || { tail -n 20 "$root/python-build.log" >&2; exit 1; }
FROM $debian_image
ENV LANG=C.UTF-8
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates \\
 && python3.11 -m venv /usr/local \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
CMD ["python"]
EOF
  step "built the stand-in $python_image"
fi

podman run --rm --pull=never "$python_image" python -c "import sys, venv; print(sys.version)" \
  | sed 's/^/podman.sh: python in the stand-in image: /' >&2
cat "$root/env"
