#!/usr/bin/env bash
# Builds the OCI image tarballs the e2e cluster imports into containerd, with
# our go-containerregistry assembler (hack/components/mkimage), from files on
# this machine: no registry, no daemon, nothing downloaded.
#
#   l7gate   ghcr.io/l7gate/l7gate:$IMAGE_TAG — the chart's image: the static
#            l7gate binary, the proxy-only l7gate-proxy of the same version
#            stamp (hack/version.sh; the chart's proxy container runs it) and
#            iproute2's `ip` (the agent's node setup runs it)
#   pause    l7gate.local/pause:3.10 — containerd's sandbox_image
#   e2e      l7gate.local/e2e:1 — workloads: `l7gate demo serve` (deathstar
#            HTTP, kfake Kafka broker), curl, kcat and busybox (sh, sleep, ...)
#   coredns  l7gate.local/coredns:<ver> — CoreDNS (hack/build-components.sh)
#
# Usage: hack/images.sh [l7gate|pause|e2e|coredns ...]   (default: all)
# Prints NAME=TARBALL lines. Tarballs are cached under $L7GATE_CACHE/images,
# keyed by the hash of their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${L7GATE_CACHE:-/var/cache/l7gate}
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/l7gate/l7gate}
IMAGE_TAG=${IMAGE_TAG:-$(awk '$1=="appVersion:"{gsub(/"/,"",$2); print $2}' deploy/helm/l7gate/Chart.yaml)}
OUT=$CACHE/images
mkdir -p "$OUT" "$CACHE/bin"
log() { echo "images: $*" >&2; }

eval "$(bash hack/build-components.sh mkimage)"

# l7gate binary and the proxy-only l7gate-proxy, static (the image has no
# libc for them), with one version stamp: the agent starts no proxy of
# another version.
L7GATE_BIN_BUILT=
l7gate_bin() {
  local bin=$CACHE/bin/l7gate-static proxy=$CACHE/bin/l7gate-proxy-static
  if [ -z "$L7GATE_BIN_BUILT" ]; then
    local v=${VERSION:-$(bash hack/version.sh)}
    log "go build ./cmd/l7gate and -tags l7gate_proxyonly (static, version $v)"
    CGO_ENABLED=0 go build -ldflags "-s -w -X main.buildVersion=$v" -o "$bin.tmp" ./cmd/l7gate
    CGO_ENABLED=0 go build -tags l7gate_proxyonly -ldflags "-s -w -X main.buildVersion=$v" -o "$proxy.tmp" ./cmd/l7gate
    mv "$bin.tmp" "$bin"
    mv "$proxy.tmp" "$proxy"
    L7GATE_BIN_BUILT=1
  fi
  echo "$bin"
}

# key FILE... : hash of the contents and of this script
key() { cat "$@" hack/images.sh | sha256sum | cut -c1-12; }

img_l7gate() {
  local bin ip=/usr/bin/ip
  [ -x "$ip" ] || ip=/sbin/ip
  l7gate_bin >/dev/null; bin=$CACHE/bin/l7gate-static
  local proxy=$CACHE/bin/l7gate-proxy-static
  local tar="$OUT/l7gate-$IMAGE_TAG-$(key "$bin" "$proxy" "$ip" <(echo "$IMAGE_REPO:$IMAGE_TAG")).tar"
  if [ ! -s "$tar" ]; then
    log "l7gate image $IMAGE_REPO:$IMAGE_TAG"
    "$MKIMAGE" -o "$tar" -tag "$IMAGE_REPO:$IMAGE_TAG" \
      -add "$bin:/usr/local/bin/l7gate" -add "$proxy:/usr/local/bin/l7gate-proxy" -bin "$ip:/usr/sbin/ip" \
      -dir /tmp:1777 -dir /run -dir /var/lib \
      -env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -entrypoint l7gate
  fi
  echo "L7GATE_IMAGE=$tar"
}

img_pause() {
  local src=hack/components/pause/pause.c
  local tar="$OUT/pause-$(key "$src").tar"
  if [ ! -s "$tar" ]; then
    log "pause image"
    gcc -static -Os -o "$CACHE/bin/pause" "$src"
    strip "$CACHE/bin/pause"
    "$MKIMAGE" -o "$tar" -tag l7gate.local/pause:3.10 -add "$CACHE/bin/pause:/pause" -entrypoint /pause
  fi
  echo "PAUSE_IMAGE=$tar"
}

img_e2e() {
  local bin
  l7gate_bin >/dev/null; bin=$CACHE/bin/l7gate-static
  local tar="$OUT/e2e-$(key "$bin" /usr/bin/curl /usr/bin/kcat /usr/bin/busybox).tar"
  if [ ! -s "$tar" ]; then
    log "e2e workload image"
    local links=()
    for t in sh sleep cat date seq echo wc grep head tail timeout env ls nc wget true false test expr printf tr cut sort uniq id; do
      links+=(-link "/bin/$t:busybox")
    done
    "$MKIMAGE" -o "$tar" -tag l7gate.local/e2e:1 \
      -add "$bin:/usr/local/bin/l7gate" -bin /usr/bin/curl -bin /usr/bin/kcat \
      -add /usr/bin/busybox:/bin/busybox "${links[@]}" \
      -dir /tmp:1777 -env PATH=/usr/local/bin:/usr/bin:/bin -cmd sh
  fi
  echo "E2E_IMAGE=$tar"
}

img_coredns() {
  eval "$(bash hack/build-components.sh coredns)"
  local ver
  ver=$(basename "$(dirname "$COREDNS")" | cut -d- -f2)
  local tar="$OUT/coredns-$(key "$COREDNS").tar"
  if [ ! -s "$tar" ]; then
    log "coredns image"
    "$MKIMAGE" -o "$tar" -tag "l7gate.local/coredns:$ver" -add "$COREDNS:/coredns" -dir /tmp:1777 -entrypoint /coredns
  fi
  echo "COREDNS_IMAGE=$tar"
  echo "COREDNS_REF=l7gate.local/coredns:$ver"
}

what=("$@")
[ ${#what[@]} -gt 0 ] || what=(l7gate pause e2e coredns)
for w in "${what[@]}"; do
  "img_$w"
done
