#!/usr/bin/env bash
# Prints the version stamp `make build` and hack/images.sh link into both
# binaries (l7gate and the proxy-only l7gate-proxy: -X main.buildVersion):
# the chart's appVersion and the commit, plus a hash of the changes for a
# modified tree — so two builds of different sources never share a stamp,
# and the agent refuses a stale l7gate-proxy (`l7gate version`).
set -euo pipefail
cd "$(dirname "$0")/.."
app=$(awk '$1=="appVersion:"{gsub(/"/,"",$2); print $2}' deploy/helm/l7gate/Chart.yaml)
if ! rev=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  echo "$app"
  exit 0
fi
v="$app+$rev"
untracked=$(git ls-files -o --exclude-standard)
if ! git diff --quiet HEAD || [ -n "$untracked" ]; then
  sum=$({ git diff HEAD --binary; git ls-files -o --exclude-standard -z | xargs -0r sha256sum; } | sha256sum | cut -c1-8)
  v="$v.dirty.$sum"
fi
echo "$v"
