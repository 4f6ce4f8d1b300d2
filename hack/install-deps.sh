#!/usr/bin/env bash
# Installs the Debian packages that l7gate's build, tests and demo need, only
# when they are missing. Safe to run repeatedly; needs root (or sudo) when it
# has something to install.
set -euo pipefail

# command -> Debian package
declare -A want=(
  [clang]=clang
  [llvm-strip]=llvm
  [ip]=iproute2
  [curl]=curl
  [kcat]=kcat
  [bpftool]=bpftool
  [protoc]=protobuf-compiler
  [ping]=iputils-ping
  # kube-proxy-like DNAT in agent's TestPrivilegedClusterIPIngressRedirect
  [iptables-nft]=iptables
  [iptables-legacy]=iptables
  [conntrack]=conntrack
  [dig]=dnsutils
  # promtool check metrics and a real Prometheus in the observability tests
  [promtool]=prometheus
  [prometheus]=prometheus
  # the service-map page in a real headless browser (observe/servicemap, chromedp)
  [chromium]=chromium
)

missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
# the protobuf well-known types (google/protobuf/*.proto) Hubble's protos import
[ -e /usr/include/google/protobuf/any.proto ] || missing+=(libprotobuf-dev)
# libbpf headers for the BPF C programs
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
# asm/types.h for BPF targets
[ -e /usr/include/x86_64-linux-gnu/asm/types.h ] || [ "$(uname -m)" != x86_64 ] || missing+=(linux-libc-dev)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
