#!/usr/bin/env bash
# Builds the e2e cluster's Go components in throwaway modules under the cache
# directory (never in the clone), keyed by version and by the hash of our own
# source, so a second run rebuilds nothing:
#
#   $L7GATE_CACHE/kube-<ver>-<hash>/kube     kube-apiserver, -controller-manager,
#                                            -scheduler, kubelet, kube-proxy, kubectl
#                                            (one multicall binary, symlinks beside it)
#   $L7GATE_CACHE/helm-<ver>/helm            Helm (helm.sh/helm/v3/cmd/helm)
#   $L7GATE_CACHE/coredns-<ver>-<hash>/coredns  CoreDNS with the plugins a kubeadm
#                                            Corefile uses
#   $L7GATE_CACHE/mkimage-<hash>/mkimage     our image assembler (go-containerregistry)
#   $L7GATE_CACHE/hubble-<ver>/hubble        the hubble CLI (github.com/cilium/cilium/hubble,
#                                            the Cilium release proto/cilium was copied
#                                            from); ~8 min cold
#   $L7GATE_CACHE/otelcol-<ver>/otelcol      an OpenTelemetry Collector (OTLP receiver,
#                                            debug and OTLP exporters; go.opentelemetry.io/
#                                            collector) for the OTLP tests
#
# Versions: Kubernetes is the one go.mod already uses (k8s.io/kubernetes and
# its staging replaces are copied from it); the others are pinned below.
# Usage: hack/build-components.sh [kube|helm|coredns|mkimage|hubble|otelcol ...]
#        (default: kube helm coredns mkimage; hubble and otelcol are built on request)
# Prints NAME=PATH lines for what it built or found.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${L7GATE_CACHE:-/var/cache/l7gate}
HELM_VERSION=v3.22.0
COREDNS_VERSION=v1.15.0
GGCR_VERSION=v0.22.1
# The Cilium release whose flow/observer protos proto/cilium carries.
HUBBLE_VERSION=v1.20.2
OTELCOL_VERSION=v0.165.0
mkdir -p "$CACHE"

log() { echo "build-components: $*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -c1-12; }

kube_version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
[ -n "$kube_version" ] || { log "k8s.io/kubernetes not found in go.mod"; exit 1; }

# module DIR MODULE — writes DIR/go.mod with go.mod's Go version; the caller
# adds requires; go.sum starts from the main module's (fewer look-ups).
module() {
  local dir=$1 mod=$2
  mkdir -p "$dir"
  printf 'module %s\n\ngo %s\n' "$mod" "$(awk '$1=="go"{print $2; exit}' go.mod)" >"$dir/go.mod"
  cp go.sum "$dir/go.sum"
}

build_kube() {
  local src=hack/components/kube/main.go
  local dir="$CACHE/kube-$kube_version-$(hash_of "$src")"
  if [ ! -x "$dir/kube" ]; then
    log "building Kubernetes $kube_version (multicall) in $dir; cold this takes 15-25 min on 2 cores"
    local tmp="$dir.tmp"
    rm -rf "$tmp"
    module "$tmp" l7gate.local/kube
    cp "$src" "$tmp/main.go"
    {
      echo "require k8s.io/kubernetes $kube_version"
      grep -E '^replace k8s\.io/' go.mod
    } >>"$tmp/go.mod"
    local minor=${kube_version#v1.}; minor=${minor%%.*}
    local pkg=k8s.io/component-base/version cg=k8s.io/client-go/pkg/version
    local ld="-s -w"
    for p in $pkg $cg; do
      ld+=" -X $p.gitVersion=$kube_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
      ld+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
      ld+=" -X $p.buildDate=2026-01-01T00:00:00Z"
    done
    (cd "$tmp" && GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
     cd "$tmp" && GOFLAGS=-mod=mod go build -tags l7gate_component -ldflags "$ld" -o kube .)
    for n in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
      ln -sf kube "$tmp/$n"
    done
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "KUBE_BIN=$dir"
}

build_helm() {
  local dir="$CACHE/helm-$HELM_VERSION"
  if [ ! -x "$dir/helm" ]; then
    log "building Helm $HELM_VERSION in $dir"
    local tmp="$dir.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf 'module l7gate.local/helm\n\ngo %s\n' "$(awk '$1=="go"{print $2; exit}' go.mod)" >"$tmp/go.mod"
    (cd "$tmp" && go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >/dev/null 2>&1 &&
      go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o helm helm.sh/helm/v3/cmd/helm)
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "HELM=$dir/helm"
}

build_coredns() {
  local src=hack/components/coredns/main.go
  local dir="$CACHE/coredns-$COREDNS_VERSION-$(hash_of "$src")"
  if [ ! -x "$dir/coredns" ]; then
    log "building CoreDNS $COREDNS_VERSION in $dir"
    local tmp="$dir.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf 'module l7gate.local/coredns\n\ngo %s\n' "$(awk '$1=="go"{print $2; exit}' go.mod)" >"$tmp/go.mod"
    cp "$src" "$tmp/main.go"
    (cd "$tmp" && go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null 2>&1 &&
      GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 &&
      CGO_ENABLED=0 go build -tags l7gate_component -ldflags "-s -w" -o coredns .)
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "COREDNS=$dir/coredns"
}

build_mkimage() {
  local src=hack/components/mkimage/main.go
  local dir="$CACHE/mkimage-$GGCR_VERSION-$(hash_of "$src")"
  if [ ! -x "$dir/mkimage" ]; then
    log "building mkimage (go-containerregistry $GGCR_VERSION) in $dir"
    local tmp="$dir.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf 'module l7gate.local/mkimage\n\ngo %s\n' "$(awk '$1=="go"{print $2; exit}' go.mod)" >"$tmp/go.mod"
    cp "$src" "$tmp/main.go"
    (cd "$tmp" && go get "github.com/google/go-containerregistry@$GGCR_VERSION" >/dev/null 2>&1 &&
      GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 &&
      go build -tags l7gate_component -o mkimage .)
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "MKIMAGE=$dir/mkimage"
}

build_hubble() {
  # The release whose protos we serve (proto/cilium): the CLI and our
  # server speak the same flow.proto.
  local ver=$HUBBLE_VERSION
  local dir="$CACHE/hubble-$ver"
  if [ ! -x "$dir/hubble" ]; then
    log "building the hubble CLI ($ver) in $dir; cold this takes ~8 min on 2 cores"
    local tmp="$dir.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf 'module l7gate.local/hubble\n\ngo %s\n' "$(awk '$1=="go"{print $2; exit}' go.mod)" >"$tmp/go.mod"
    # `go install pkg@version` refuses a module with replace lines; a
    # throwaway module that requires it builds the package fine.
    (cd "$tmp" && go get "github.com/cilium/cilium@$ver" >/dev/null 2>&1 &&
      CGO_ENABLED=0 GOFLAGS=-mod=mod go build -ldflags "-s -w" -o hubble github.com/cilium/cilium/hubble)
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "HUBBLE=$dir/hubble"
}

build_otelcol() {
  local ver=$OTELCOL_VERSION
  local dir="$CACHE/otelcol-$ver"
  if [ ! -x "$dir/otelcol" ]; then
    log "building an OpenTelemetry Collector ($ver: otlp receiver, debug and otlp exporters) in $dir"
    local tmp="$dir.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf 'module l7gate.local/otelcol\n\ngo %s\n' "$(awk '$1=="go"{print $2; exit}' go.mod)" >"$tmp/go.mod"
    cat >"$tmp/main.go" <<'GO'
// otelcol: an OpenTelemetry Collector with the OTLP receiver and the debug
// and OTLP exporters only, for l7gate's tests.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/exporter/otlpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func factories() (otelcol.Factories, error) {
	var f otelcol.Factories
	var err error
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
		return f, err
	}
	if f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](debugexporter.NewFactory(), otlpexporter.NewFactory()); err != nil {
		return f, err
	}
	f.Telemetry = otelconftelemetry.NewFactory()
	return f, nil
}

func main() {
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{Command: "otelcol", Description: "OTLP receiver, debug and OTLP exporters for l7gate tests"},
		Factories: factories,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{ResolverSettings: confmap.ResolverSettings{
			ProviderFactories: []confmap.ProviderFactory{fileprovider.NewFactory(), envprovider.NewFactory()},
			DefaultScheme:     "env",
		}},
	}
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		log.Fatal(err)
	}
}
GO
    (cd "$tmp" && go get "go.opentelemetry.io/collector/otelcol@$ver" "go.opentelemetry.io/collector/receiver/otlpreceiver@$ver" \
        "go.opentelemetry.io/collector/exporter/debugexporter@$ver" "go.opentelemetry.io/collector/exporter/otlpexporter@$ver" "go.opentelemetry.io/collector/service@$ver" \
        go.opentelemetry.io/collector/confmap/provider/fileprovider go.opentelemetry.io/collector/confmap/provider/envprovider >/dev/null 2>&1 &&
      CGO_ENABLED=0 GOFLAGS=-mod=mod go build -ldflags "-s -w" -o otelcol .)
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "OTELCOL=$dir/otelcol"
}

what=("$@")
[ ${#what[@]} -gt 0 ] || what=(kube helm coredns mkimage)
for w in "${what[@]}"; do
  "build_$w"
done
