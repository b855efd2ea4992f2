#!/usr/bin/env bash
# Builds the test cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, helm)
# from the pinned Go modules under tests/cluster/build/, into a cache outside the checkout keyed by the version and
# the go.sum, so a fresh clone on the same machine reuses the binaries and a new machine (or a new pin) rebuilds
# them. kubelet and kube-scheduler are built for the real node, which make cluster does not start yet.
# Prints the folder that holds the binaries.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${DSEXPORT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dsexport}"

# version_of MODULE_DIR MODULE: the version go.mod requires.
version_of() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }

# key_of MODULE_DIR: a hash of the contents of go.mod and go.sum (never their paths, so a clone in another folder,
# as CI's is, finds the same binaries), so any change of a pin or a dependency rebuilds.
key_of() { cat "$1/go.mod" "$1/go.sum" | sha256sum | cut -c1-12; }

export CGO_ENABLED=0 GOFLAGS=-trimpath

build() { # build MODULE_DIR OUT PACKAGE LDFLAGS
    local dir="$1" out="$2" pkg="$3" ldflags="$4"
    if [[ -x "$out" ]]; then return; fi
    mkdir -p "$(dirname "$out")"
    echo "building $(basename "$out") ($pkg) ..." >&2
    local start=$SECONDS
    (cd "$dir" && go build -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg")
    mv -f "$out.tmp.$$" "$out"
    echo "built $(basename "$out") in $((SECONDS - start)) s" >&2
}

kube_dir="$here/build/kube"
kube_version="$(version_of "$kube_dir" k8s.io/kubernetes)"
minor="$(echo "$kube_version" | cut -d. -f2)"
bin="$cache/bin/k8s-$kube_version-$(key_of "$kube_dir")"
kv=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kv+=" -X $p.gitVersion=$kube_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    kv+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
for tool in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    build "$kube_dir" "$bin/$tool" "k8s.io/kubernetes/cmd/$tool" "-s -w$kv"
done

etcd_dir="$here/build/etcd"
etcd_version="$(version_of "$etcd_dir" go.etcd.io/etcd/server/v3)"
etcd_bin="$cache/bin/etcd-$etcd_version-$(key_of "$etcd_dir")"
build "$etcd_dir" "$etcd_bin/etcd" go.etcd.io/etcd/server/v3 "-s -w"

helm_dir="$here/build/helm"
helm_version="$(version_of "$helm_dir" helm.sh/helm/v3)"
helm_bin="$cache/bin/helm-$helm_version-$(key_of "$helm_dir")"
build "$helm_dir" "$helm_bin/helm" helm.sh/helm/v3/cmd/helm \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"

# One folder for the callers: symlinks into the per-version folders.
all="$cache/bin/set-$(echo "$bin $etcd_bin $helm_bin" | sha256sum | cut -c1-12)"  # cache paths only: same in any clone
if [[ ! -d "$all" ]]; then
    mkdir -p "$all.tmp.$$"
    for f in "$bin"/* "$etcd_bin/etcd" "$helm_bin/helm"; do ln -s "$f" "$all.tmp.$$/$(basename "$f")"; done
    mv -T "$all.tmp.$$" "$all" 2>/dev/null || rm -rf "$all.tmp.$$"
fi
echo "$all"
