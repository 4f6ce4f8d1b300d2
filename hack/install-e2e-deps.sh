#!/usr/bin/env bash
# Debian packages the e2e cluster (hack/cluster.sh) runs: containerd and runc,
# the CNI plugins, etcd, iptables and conntrack (kube-proxy), socat (the
# host's door to the apiserver), busybox (the workload image's shell),
# openssl (the cluster's certificates), gcc (the static pause binary).
# Installs only what is missing.
set -euo pipefail
declare -A want=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/ptp]=containernetworking-plugins
  [etcd]=etcd-server
  [iptables]=iptables
  [conntrack]=conntrack
  [socat]=socat
  [/usr/bin/busybox]=busybox-static
  [openssl]=openssl
  [gcc]=gcc
  [nsenter]=util-linux
)
missing=()
for cmd in "${!want[@]}"; do
  if [[ $cmd == /* ]]; then
    [ -e "$cmd" ] || missing+=("${want[$cmd]}")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
  fi
done
# static glibc for the pause binary
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ "$(uname -m)" != x86_64 ] || missing+=(libc6-dev)
[ ${#missing[@]} -gt 0 ] || exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-e2e-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
