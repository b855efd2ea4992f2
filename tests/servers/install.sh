#!/usr/bin/env bash
# One-time machine setup for the real test servers that the destination tests start (tests/servers/*.py).
#
# Idempotent and quick when everything is in place, so `make test` can run it every time (as root, as CI does).
# What it sets up, and why here rather than at test time:
#   - OpenSSH's sshd (Debian package openssh-server). The tests run their own sshd on a loopback port with their
#     own config; the system service is never started or configured.
#   - Two SFTP test accounts, because sshd logs users in only as real system users and a password can only be
#     checked against /etc/shadow, which a test must not change for root. They have no shell (nologin), are
#     allowed only by the tests' own sshd (AllowUsers there), and their password is random per machine, kept in
#     a root-only file. Each test run gets its own chroot under $SFTP_BASE, so runs never see each other's files.
#       dsexport-sftp        password or key; its login folder is the destination root
#       dsexport-sftp-nodir  same credentials, but its chroot folder is missing (the "missing root" case)
#   - podman, runc, mmdebstrap and skopeo (Debian packages) for `make image`, which builds the product's image
#     without a registry (tests/image/build.sh).
#   - containerd, the CNI plugins and catatonit (Debian packages) for the real node of the Kubernetes tests
#     (tests/cluster/node.py). containerd runs with the tests' own configuration; Debian's service is never
#     started (there is no systemd here, and on a machine with one the package's unit is left alone).
#   - Prometheus (Debian package prometheus): promtool, which checks and unit-tests the product's alert rules
#     (tests/unit/test_alerts.py), and the server that other tests start with their own configuration. The
#     package's postinst would start Debian's service (init.d, or systemd where there is one); a policy-rc.d that
#     refuses every start, in place only during the install, keeps it stopped.
#   - Azurite (npm), pinned by tests/servers/azurite/package-lock.json, into a cache folder outside the checkout
#     keyed by version, since CI clones afresh but keeps the machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${DSEXPORT_CACHE:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/dsexport}"  # as azurite.py
sftp_base=/var/lib/dsexport-sftp
azurite_version="$(sed -n 's/.*"azurite": "\([0-9.]*\)".*/\1/p' "$here/azurite/package.json")"

# ----------------------------------------------------------------------------------------------- sshd
if [ ! -x /usr/sbin/sshd ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
fi
# sshd refuses to start without its privilege-separation folder; /run is emptied at boot, so check every time.
install -d -m 0755 /run/sshd

# Chroot folders must be owned by root and not writable by others all the way up, so no /tmp here.
install -d -m 0755 -o root -g root "$sftp_base"
new_user=0
for user in dsexport-sftp dsexport-sftp-nodir; do
  if ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin "$user"
    new_user=1
  fi
done
if [ ! -s "$sftp_base/password" ] || [ "$new_user" = 1 ]; then
  umask 077
  password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  printf 'dsexport-sftp:%s\ndsexport-sftp-nodir:%s\n' "$password" "$password" | chpasswd
  printf '%s' "$password" >"$sftp_base/password.new"
  mv "$sftp_base/password.new" "$sftp_base/password"
fi

# --------------------------------------------------------------------------------------- image building
if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null \
  || ! command -v skopeo >/dev/null || ! command -v containerd >/dev/null || [ ! -x /usr/lib/cni/bridge ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    podman runc mmdebstrap skopeo catatonit uidmap fuse-overlayfs containerd containernetworking-plugins >/dev/null
fi

# ------------------------------------------------------------------------------------------ Prometheus
if [ ! -x /usr/bin/promtool ] || [ ! -x /usr/bin/prometheus ]; then
  # invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a service; 101 means "not allowed". A
  # machine's own policy-rc.d (Docker images have one) is left as it is.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  status=0
  { apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || status=$?
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
  [ "$status" = 0 ] || exit "$status"
fi

# -------------------------------------------------------------------------------------------- Azurite
azurite_dir="$cache/azurite-$azurite_version"
if ! cmp -s "$here/azurite/package-lock.json" "$azurite_dir/package-lock.json" \
  || [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
  rm -rf "$azurite_dir.partial"
  mkdir -p "$azurite_dir.partial"
  cp "$here/azurite/package.json" "$here/azurite/package-lock.json" "$azurite_dir.partial/"
  (cd "$azurite_dir.partial" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
  rm -rf "$azurite_dir"
  mv "$azurite_dir.partial" "$azurite_dir"
fi
