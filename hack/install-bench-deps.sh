#!/usr/bin/env bash
# Installs the Debian packages `make bench` needs (load generators and the
# comparison proxies/firewalls), only when they are missing. Safe to run
# repeatedly; needs root (or sudo) when it has something to install.
set -euo pipefail

# command -> Debian package
declare -A want=(
  [wrk]=wrk
  [h2load]=nghttp2-client
  [haproxy]=haproxy
  [iptables]=iptables
  [iptables-restore]=iptables
  [taskset]=util-linux
  [ip]=iproute2
)

missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-bench-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
