#!/usr/bin/env bash
# `make image`: the Dockerfile built with podman into dsexport:<version> and dsexport:dev, reproducibly, and only
# when its inputs changed. Prints the image ID.
#
# Where a registry is reachable, BASE can be any Python 3.11+ image (`make image BASE=python:3.11-slim`). This
# machine reaches no image registry, so by default the base is a Debian root filesystem made by mmdebstrap from
# Debian's packages (python3, python3-venv, ca-certificates), imported as localhost/dsexport-base:bookworm.
#
# podman runs with a private configuration and storage under the cache folder (nothing in /etc is touched), with
# runc and cgroupfs (crun and systemd cgroups fail on this kind of machine), and host networking for the build
# (podman's default network would add a bridge and iptables chains to the host).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${DSEXPORT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsexport}"
image="${IMAGE:-dsexport}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml")"
# A fixed time for every timestamp in the image, so the same inputs give the same layers.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct -- Dockerfile requirements/runtime.txt 2>/dev/null || echo 0)}"

# ------------------------------------------------------------------------------------- private podman config
conf="$cache/containers"
mkdir -p "$conf/storage" "$conf/run"
cat > "$conf/storage.conf.tmp" <<EOF
[storage]
driver = "overlay"
graphroot = "$conf/storage"
runroot = "$conf/run"
EOF
cat > "$conf/containers.conf.tmp" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
mv -f "$conf/storage.conf.tmp" "$conf/storage.conf"
mv -f "$conf/containers.conf.tmp" "$conf/containers.conf"
export CONTAINERS_STORAGE_CONF="$conf/storage.conf" CONTAINERS_CONF="$conf/containers.conf"

# -------------------------------------------------------------------------------------------- the base image
base="${BASE:-}"
if [[ -z "$base" ]]; then
    base="localhost/dsexport-base:bookworm"
    if ! podman image exists "$base"; then
        echo "building the base image $base with mmdebstrap ..." >&2
        start=$SECONDS
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        SOURCE_DATE_EPOCH=0 mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
            --dpkgopt='path-exclude=/usr/share/{doc,man,info,locale}/*' \
            --dpkgopt='path-include=/usr/share/locale/locale.alias' \
            bookworm "$work/rootfs.tar" /etc/apt/sources.list.d/debian.sources
        touch -d @0 "$work/rootfs.tar"  # podman import takes the image's creation time from the file
        podman import --quiet --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$base" >/dev/null
        echo "built the base image in $((SECONDS - start)) s" >&2
    fi
fi

# ---------------------------------------------------------------------------------------------- the image
# One build at a time on a machine: two test runs building at once would prune each other's build stages.
mkdir -p "$cache"
exec 9>"$cache/image.lock"
flock 9
# The inputs: everything the Dockerfile copies, the Dockerfile itself, this script and the base image's ID.
inputs="$( (cd "$repo" && git ls-files -z Dockerfile pyproject.toml README.md requirements/runtime.txt operator \
            tests/image/build.sh \
            | sort -z | xargs -0 sha256sum; podman image inspect --format '{{.Id}}' "$base") | sha256sum | cut -c1-16)"
current="$(podman image inspect --format '{{index .Labels "io.dsexport.inputs"}}' "$image:dev" 2>/dev/null || true)"
if [[ "$current" != "$inputs" ]]; then
    echo "building $image:$version from $base ..." >&2
    # The pinned Python packages, NAME==VERSION comma-separated, for scanners and people (podman image inspect).
    packages="$(sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\) .*/\1/p' "$repo/requirements/runtime.txt" | paste -sd, -)"
    start=$SECONDS
    podman build --quiet --pull=never --network=host --timestamp "$SOURCE_DATE_EPOCH" \
        -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
        --build-arg BASE="$base" --build-arg SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" \
        --build-arg VERSION="$version" \
        --label io.dsexport.inputs="$inputs" \
        --label io.dsexport.python-packages="$packages" \
        -t "$image:$version" -t "$image:dev" "$repo" >/dev/null
    podman image prune --force >/dev/null  # the build stage, untagged; only in this private storage
    size="$(podman image inspect --format '{{.Size}}' "$image:dev")"
    echo "built $image:$version in $((SECONDS - start)) s, $((size / 1024 / 1024)) MiB" >&2
fi
podman image inspect --format '{{.Id}}' "$image:dev"
