#!/usr/bin/env bash
# A real Kubernetes cluster on this machine, from real components, inside
# network and mount namespaces of its own (the machine's routing, iptables,
# sysctls and mounts are never touched):
#
# Dual-stack, IPv4 primary: every node, pod and dual-stack Service has an
# IPv4 and an IPv6 (fd00:7e2e::/32) address; Services are IPv4-only unless
# they ask for both families (ipFamilyPolicy).
#
#   switch netns   a bridge joining the nodes' eth0 (198.18.0.0/24,
#                  fd00:7e2e::/64)
#   node netns     one per node (node1 198.18.0.11 + fd00:7e2e::11, node2
#                  198.18.0.12 + fd00:7e2e::12, ...),
#                  with its own mount namespace: /run, /var/lib, /var/log are
#                  the node's own directories under the work dir, /sys/fs/bpf
#                  is a fresh bpffs, and the global sysctls the kubelet wants
#                  are files of its own. In it: containerd + runc (Debian),
#                  kubelet (cgroupfs driver, cgroup root /l7e2e-<id>-<node>),
#                  kube-proxy (iptables mode), CNI ptp + host-local + portmap
#                  (Debian); pods 198.18.64.0/24 + fd00:7e2e:1:1::/64 on
#                  node1, 198.18.65.0/24 + fd00:7e2e:1:2::/64 on node2
#                  (cluster CIDRs 198.18.64.0/18, fd00:7e2e:1::/56); IPv4
#                  and IPv6 forwarding, each node routes the others' pod
#                  CIDRs via their eth0 address of the same family.
#   node1 also     etcd (Debian) on its loopback, kube-apiserver on
#                  198.18.0.11:6443, kube-controller-manager, kube-scheduler.
#   host           only a socat forward 127.0.0.1:<port> -> the apiserver,
#                  so kubectl on the host reaches the cluster.
#   services       198.19.128.0/20 and fd00:7e2e:2::/112 (kube-proxy
#                  iptables + ip6tables, dual-stack)
#   in-cluster     CoreDNS (Deployment + dual-stack kube-dns Service
#                  198.19.128.10 and fd00:7e2e:2::a; pods are told the IPv4
#                  one),
#                  l7gate by `helm install deploy/helm/l7gate`.
#
# Usage:
#   hack/cluster.sh up      bring a cluster up, print KUBECONFIG and kubectl
#   hack/cluster.sh down    remove every cluster this script made
#   hack/cluster.sh e2e     up, run the e2e suite, down (also on failure, Ctrl-C)
#   hack/cluster.sh env     print the running cluster's environment
# Env: E2E_NODES (default 2), L7GATE_CACHE (/var/cache/l7gate),
#      L7GATE_E2E_DIR (/var/tmp/l7gate-e2e), E2E_KEEP=1 keeps the cluster
#      after `e2e`, E2E_RUN (go test -run pattern).
# `down` and `e2e` fail when a removed cluster left anything behind.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${L7GATE_CACHE:-/var/cache/l7gate}
WORKROOT=${L7GATE_E2E_DIR:-/var/tmp/l7gate-e2e}
NODES=${E2E_NODES:-2}
SVC_CIDR=198.19.128.0/20
SVC_CIDR6=fd00:7e2e:2::/112
SVC_KUBERNETES=198.19.128.1
DNS_IP=198.19.128.10
DNS_IP6=fd00:7e2e:2::a
CLUSTER_CIDR=198.18.64.0/18
CLUSTER_CIDR6=fd00:7e2e:1::/56
CLUSTER_DOMAIN=cluster.local

log() { echo "cluster: $(date +%T) $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

node_ip() { echo "198.18.0.$((10 + $1))"; }
pod_cidr() { echo "198.18.$((63 + $1)).0/24"; }
pod_gw() { echo "198.18.$((63 + $1)).1"; }
node_ip6() { echo "fd00:7e2e::$((10 + $1))"; }
pod_cidr6() { echo "fd00:7e2e:1:$1::/64"; }
pod_gw6() { echo "fd00:7e2e:1:$1::1"; }

# --- state of one cluster: $WORKROOT/<id>/ ----------------------------------
load() { # load ID
  ID=$1
  W=$WORKROOT/$ID
  # shellcheck disable=SC1091
  [ -f "$W/env" ] && . "$W/env"
  return 0
}
netns_of() { echo "l7e2e-$ID-$1"; } # node1 / node2 / sw
mntns_of() { echo "$W/ns/$1.mnt"; }

# on NODE CMD...: run in the node's network and mount namespaces
on() {
  local n=$1; shift
  nsenter --net="/run/netns/$(netns_of "$n")" --mount="$(mntns_of "$n")" -- "$@"
}

# close_fds: closes every descriptor above 2 of the calling (sub)shell, so
# a daemon inherits none: `flock /tmp/l7gate-e2e.lock make e2e` gives its
# children the lock's descriptor, and a kept cluster's daemons (E2E_KEEP=1,
# cluster-up) holding it would keep every later e2e run waiting until
# cluster-down.
close_fds() {
  local f n
  for f in /proc/$BASHPID/fd/*; do
    n=${f##*/}
    [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-" 2>/dev/null
  done
  return 0
}

# close_fds_then CMD...: CMD without the caller's descriptors above 2
close_fds_then() { close_fds; exec "$@"; }

# start NODE NAME CMD...: a daemon in the node, log in logs/, pid recorded
start() {
  local n=$1 name=$2; shift 2
  close_fds_then nsenter --net="/run/netns/$(netns_of "$n")" --mount="$(mntns_of "$n")" -- setsid "$@" \
    >"$W/logs/$n-$name.log" 2>&1 </dev/null &
  echo $! >"$W/pids/$n-$name"
}

wait_for() { # wait_for SECONDS WHAT CMD...
  local t=$1 what=$2; shift 2
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${t}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

# --- certificates (openssl, EC P-256) ----------------------------------------
cert() { # cert NAME SUBJECT [SANS]
  local name=$1 subj=$2 sans=${3:-}
  local d=$W/pki
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  local ext=$d/$name.ext
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -z "$sans" ] || echo "subjectAltName=$sans"
  } >"$ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$d/$name.crt" 2>/dev/null
}

kubeconfig() { # kubeconfig FILE SERVER CERTNAME
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: l7e2e
  cluster:
    server: $2
    certificate-authority: $W/pki/ca.crt
users:
- name: $3
  user:
    client-certificate: $W/pki/$3.crt
    client-key: $W/pki/$3.key
contexts:
- name: l7e2e
  context: {cluster: l7e2e, user: $3}
current-context: l7e2e
EOF
}

# --- components ---------------------------------------------------------------
components() {
  local out
  out=$(bash hack/build-components.sh kube helm)
  eval "$out"
  out=$(bash hack/images.sh)
  eval "$out"
}

topology() {
  ip netns add "$(netns_of sw)"
  ip -n "$(netns_of sw)" link add br0 type bridge
  ip -n "$(netns_of sw)" link set br0 up
  ip -n "$(netns_of sw)" link set lo up
  mkdir -p "$W/ns"
  mount -t tmpfs -o size=1m l7e2e-ns "$W/ns"
  mount --make-private "$W/ns"
  local i n
  for i in $(seq 1 "$NODES"); do
    n=node$i
    local ns; ns=$(netns_of $n)
    ip netns add "$ns"
    ip link add "e2e$ID$i" netns "$(netns_of sw)" type veth peer name eth0 netns "$ns"
    ip -n "$(netns_of sw)" link set "e2e$ID$i" master br0 up
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0
    ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
    # nodad: the kubelet checks --node-ip against the node's addresses at
    # once, and a tentative address cannot be bound
    ip -n "$ns" -6 addr add "$(node_ip6 "$i")/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    # no default route here (nothing is outside), but a connect() to a
    # ClusterIP needs a route before kube-proxy's DNAT in OUTPUT applies
    ip -n "$ns" route add "$SVC_CIDR" dev eth0
    ip -n "$ns" -6 route add "$SVC_CIDR6" dev eth0
    local j
    for j in $(seq 1 "$NODES"); do
      [ "$j" = "$i" ] && continue
      ip -n "$ns" route add "$(pod_cidr "$j")" via "$(node_ip "$j")"
      ip -n "$ns" -6 route add "$(pod_cidr6 "$j")" via "$(node_ip6 "$j")"
    done
    # the node's own directories and mount namespace
    local d=$W/$n
    mkdir -p "$d/run" "$d/varlib" "$d/varlog" "$d/sysctl" "$d/cni/net.d" "$d/etc"
    touch "$(mntns_of $n)"
    # the global sysctls kubelet sets (setupKernelTunables) become files here
    local kv
    for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
      kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
      local k=${kv%%=*}
      echo "${kv#*=}" >"$d/sysctl/${k//\//_}"
    done
    unshare --mount="$(mntns_of $n)" --propagation slave bash -euc '
      d=$1
      mount --bind "$d/run" /run
      mount --bind "$d/varlib" /var/lib
      mount --bind "$d/varlog" /var/log
      mount -t bpf bpffs /sys/fs/bpf
      mount --make-shared /sys/fs/bpf
      for f in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
        mount --bind "$d/sysctl/${f//\//_}" "/proc/sys/$f"
      done' _ "$d"
  done
}

pki() {
  mkdir -p "$W/pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$W/pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$W/pki/ca.key" -subj "/CN=l7e2e-ca" -days 30 -out "$W/pki/ca.crt" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$(node_ip 1),IP:$SVC_KUBERNETES,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
  cert admin "/O=system:masters/CN=admin"
  local i
  for i in $(seq 1 "$NODES"); do
    cert "node$i" "/O=system:nodes/CN=system:node:node$i"
  done
  openssl ecparam -name prime256v1 -genkey -noout -out "$W/pki/sa.key" 2>/dev/null
  openssl ec -in "$W/pki/sa.key" -pubout -out "$W/pki/sa.pub" 2>/dev/null
  kubeconfig "$W/kubeconfig" "https://127.0.0.1:$API_PORT" admin
  kubeconfig "$W/admin-in.kubeconfig" "https://$(node_ip 1):6443" admin
  for i in $(seq 1 "$NODES"); do
    kubeconfig "$W/node$i.kubeconfig" "https://$(node_ip 1):6443" "node$i"
  done
}

control_plane() {
  local ip; ip=$(node_ip 1)
  start node1 etcd etcd --name default --data-dir "$W/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --unsafe-no-fsync
  start node1 kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address="$ip" --advertise-address="$ip" --secure-port=6443 \
    --service-cluster-ip-range=$SVC_CIDR,$SVC_CIDR6 \
    --tls-cert-file="$W/pki/apiserver.crt" --tls-private-key-file="$W/pki/apiserver.key" \
    --client-ca-file="$W/pki/ca.crt" \
    --kubelet-client-certificate="$W/pki/admin.crt" --kubelet-client-key="$W/pki/admin.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$W/pki/sa.pub" --service-account-signing-key-file="$W/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.$CLUSTER_DOMAIN \
    --authorization-mode=Node,RBAC --allow-privileged=true --profiling=false
  # the host's door to the apiserver (loopback only)
  close_fds_then socat "TCP-LISTEN:$API_PORT,bind=127.0.0.1,reuseaddr,fork" \
    "EXEC:nsenter --net=/run/netns/$(netns_of node1) socat STDIO TCP\:$ip\:6443" \
    >"$W/logs/host-apiserver-forward.log" 2>&1 </dev/null &
  echo $! >"$W/pids/host-apiserver-forward"
  wait_for 120 "kube-apiserver /readyz" "$KUBECTL" get --raw /readyz ||
    { tail -n 30 "$W/logs/node1-etcd.log" "$W/logs/node1-kube-apiserver.log" >&2; return 1; }
  start node1 kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig="$W/admin-in.kubeconfig" --authentication-kubeconfig="$W/admin-in.kubeconfig" \
    --authorization-kubeconfig="$W/admin-in.kubeconfig" \
    --service-account-private-key-file="$W/pki/sa.key" --root-ca-file="$W/pki/ca.crt" \
    --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1 \
    --cluster-cidr=$CLUSTER_CIDR,$CLUSTER_CIDR6 --service-cluster-ip-range=$SVC_CIDR,$SVC_CIDR6 \
    --profiling=false
  start node1 kube-scheduler "$KUBE_BIN/kube-scheduler" \
    --kubeconfig="$W/admin-in.kubeconfig" --authentication-kubeconfig="$W/admin-in.kubeconfig" \
    --authorization-kubeconfig="$W/admin-in.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false
}

node() { # node I
  local i=$1 n=node$1 d=$W/node$1
  local ip; ip=$(node_ip "$i")
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "l7gate.local/pause:3.10"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  # this machine's bounding set lacks CAP_SYS_RESOURCE: an oom_score_adj
  # below containerd's own (the sandbox's -998) is refused, so clamp it
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
EOF
  cat >"$d/cni/net.d/10-l7e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "l7e2e",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{"subnet": "$(pod_cidr "$i")", "gateway": "$(pod_gw "$i")"}],
          [{"subnet": "$(pod_cidr6 "$i")", "gateway": "$(pod_gw6 "$i")"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  start "$n" containerd containerd --config "$d/containerd.toml"
  wait_for 60 "$n containerd" on "$n" ctr --address /run/containerd/containerd.sock version ||
    { tail -n 30 "$W/logs/$n-containerd.log" >&2; return 1; }
  local t
  for t in "$PAUSE_IMAGE" "$L7GATE_IMAGE" "$E2E_IMAGE" "$COREDNS_IMAGE"; do
    on "$n" ctr --address /run/containerd/containerd.sock -n k8s.io images import "$t" >/dev/null
  done
  # a second tag of the same image, for the suite's `helm upgrade`
  on "$n" ctr --address /run/containerd/containerd.sock -n k8s.io images tag --force \
    "ghcr.io/l7gate/l7gate:$IMAGE_TAG" "ghcr.io/l7gate/l7gate:$IMAGE_TAG-upgrade" >/dev/null
  echo "nameserver $DNS_IP" >"$d/etc/resolv.conf"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $W/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /l7e2e-$ID-$n
cgroupsPerQOS: true
failCgroupV1: false
clusterDNS: [$DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
resolvConf: $d/etc/resolv.conf
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 20s
EOF
  # the kubelet's cgroup root must exist in every hierarchy (cgroupfs
  # driver, hybrid v1 + unified); a v1 cpuset starts empty: copy the root's
  local h
  for h in /sys/fs/cgroup/*/; do
    mountpoint -q "$h" || continue
    mkdir -p "$h/l7e2e-$ID-$n"
  done
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/l7e2e-$ID-$n/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/l7e2e-$ID-$n/cpuset.mems"
  start "$n" kubelet "$KUBE_BIN/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$W/$n.kubeconfig" \
    --hostname-override="$n" --node-ip="$ip,$(node_ip6 "$i")"
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $W/admin-in.kubeconfig}
mode: iptables
clusterCIDR: $CLUSTER_CIDR,$CLUSTER_CIDR6
hostnameOverride: $n
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start "$n" kube-proxy "$KUBE_BIN/kube-proxy" --config="$d/kube-proxy.yaml"
}

addons() {
  sed -e "s|@COREDNS_IMAGE@|$COREDNS_REF|" -e "s|@DNS_IP@|$DNS_IP|" -e "s|@DNS_IP6@|$DNS_IP6|" -e "s|@DOMAIN@|$CLUSTER_DOMAIN|" \
    e2e/manifests/coredns.yaml | "$KUBECTL" apply -f - >/dev/null
}

# The socket LB of each node's agent covers that node's pods only (the
# kubelet's cgroup root; NODE_NAME is expanded by the kubelet): every node
# of this cluster shares the machine's one cgroup hierarchy.
helm_install() {
  "$HELM" install l7gate deploy/helm/l7gate --namespace kube-system \
    --set envoy.enabled=false --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
    --set logLevel=info --set-string socketLB.cgroup="/l7e2e-$ID-\$(NODE_NAME)" \
    --wait --timeout 5m >"$W/logs/helm-install.log" 2>&1 ||
    { cat "$W/logs/helm-install.log" >&2; return 1; }
}

write_env() {
  cat >"$W/env" <<EOF
ID=$ID
NODES=$NODES
API_PORT=$API_PORT
KUBE_BIN=$KUBE_BIN
KUBECTL=$KUBE_BIN/kubectl
KUBECONFIG=$W/kubeconfig
HELM=$HELM
IMAGE_TAG=$IMAGE_TAG
L7GATE_IMAGE=$L7GATE_IMAGE
KUBE_VERSION=$KUBE_VERSION
E2E_WORK=$W
EOF
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root"
  bash hack/install-deps.sh
  bash hack/install-e2e-deps.sh
  ID=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
  W=$WORKROOT/$ID
  mkdir -p "$W/logs" "$W/pids"
  echo "$ID" >"$WORKROOT/current"
  host_chains >"$WORKROOT/host-chains-$ID"
  log "cluster $ID in $W"
  components
  log "components and images ready (${SECONDS}s)"
  KUBE_VERSION=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
  IMAGE_TAG=${IMAGE_TAG:-$(awk '$1=="appVersion:"{gsub(/"/,"",$2); print $2}' deploy/helm/l7gate/Chart.yaml)}
  API_PORT=$((20000 + RANDOM % 20000))
  KUBECTL=$KUBE_BIN/kubectl
  export KUBECONFIG=$W/kubeconfig
  write_env
  topology
  pki
  control_plane
  local i
  for i in $(seq 1 "$NODES"); do node "$i"; done
  wait_for 180 "nodes Ready" "$KUBECTL" wait --for=condition=Ready node --all --timeout=2s ||
    { diagnose; return 1; }
  addons
  helm_install || { diagnose; return 1; }
  wait_for 180 "CoreDNS ready" "$KUBECTL" -n kube-system rollout status deploy/coredns --timeout=2s ||
    { diagnose; return 1; }
  log "up: $NODES node(s)"
  cat <<EOF
export KUBECONFIG=$W/kubeconfig
export PATH=$KUBE_BIN:\$PATH   # kubectl
# helm: $HELM
EOF
}

# diagnose: what a failed step needs to be understood
diagnose() {
  {
    echo "---- nodes and pods"
    "$KUBECTL" get nodes -o wide 2>&1 || true
    "$KUBECTL" get pods -A -o wide 2>&1 || true
    local f
    for f in "$W"/logs/*.log; do
      echo "---- last lines of $f"
      tail -n 15 "$f"
    done
    # l7gate's containers, from the kubelets' files (kubectl logs needs a
    # working apiserver and kubelet)
    for f in "$W"/node*/varlog/pods/kube-system_l7gate-*/*/*.log; do
      [ -f "$f" ] || continue
      echo "---- last lines of $f"
      tail -n 20 "$f"
    done
  } >&2
}

# --- teardown: everything, by id ---------------------------------------------
down_one() {
  load "$1"
  log "removing cluster $ID ($W)"
  NS_INODES=$(ns_inodes)
  # seconds since boot when the teardown began: a process started later
  # found in a namespace with one of our inode numbers is in a new
  # namespace that reused a freed number (other tests on the machine), not
  # one of ours (leftovers)
  TEARDOWN_SINCE=$(awk '{print int($1)}' /proc/uptime)
  local n f pid
  # 1. our daemons (kubelet first, so nothing is restarted)
  for f in "$W"/pids/*-kubelet "$W"/pids/*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 1
  # 2. every process in a node's namespaces or cgroups (containers, shims)
  local victims
  for round in 1 2 3 4 5; do
    victims=$(ns_pids) || true
    [ -n "$victims" ] || break
    # shellcheck disable=SC2086
    kill -KILL $victims 2>/dev/null || true
    sleep 0.5
  done
  for f in "$W"/pids/*; do
    [ -f "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  # 3. mount namespaces (with them: bpffs pins, pod netns mounts, overlays)
  for f in "$W"/ns/*.mnt; do
    [ -e "$f" ] || continue
    umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null || true
  done
  mountpoint -q "$W/ns" && { umount "$W/ns" 2>/dev/null || umount -l "$W/ns"; }
  # 4. network namespaces (with them: veths, routes, iptables chains, tc programs)
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^l7e2e-$ID-" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  # 5. cgroups the kubelets and runc made
  local c
  for c in /sys/fs/cgroup/*/l7e2e-"$ID"-* /sys/fs/cgroup/unified/l7e2e-"$ID"-*; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # 6. the work dir, except the logs (the components' and every
  # container's, as the kubelets wrote them)
  local keep=$WORKROOT/logs-$ID
  for d in "$W"/node*/varlog/pods; do
    [ -d "$d" ] && [ -d "$W/logs" ] || continue
    n=$(basename "$(dirname "$(dirname "$d")")")
    cp -r "$d" "$W/logs/$n-pods" 2>/dev/null || true
  done
  [ -d "$W/logs" ] && { rm -rf "$keep"; mv "$W/logs" "$keep"; }
  # the five newest clusters' logs are kept
  ls -dt "$WORKROOT"/logs-* 2>/dev/null | tail -n +6 | xargs -r rm -rf
  rm -rf "$W"
  [ "$(cat "$WORKROOT/current" 2>/dev/null)" != "$ID" ] || rm -f "$WORKROOT/current"
  log "removed cluster $ID (logs kept in $keep)"
  leftovers
}

# ns_inodes: the inodes of this cluster's node mount and network
# namespaces (down_one keeps them in NS_INODES: after the unmounts a
# surviving process is still found by them)
ns_inodes() {
  local f ns inodes=""
  for f in "$W"/ns/*.mnt; do
    [ -e "$f" ] && inodes+=" $(stat -L -c %i "$f" 2>/dev/null || true)"
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^l7e2e-$ID-" || true); do
    inodes+=" $(stat -L -c %i "/run/netns/$ns" 2>/dev/null || true)"
  done
  echo "$inodes"
}

# ns_pids: pids in this cluster's node namespaces or cgroups (never ours)
ns_pids() {
  local inodes
  inodes="${NS_INODES:-} $(ns_inodes)"
  {
    # one stat for every process's mount and network namespace
    stat -L -c '%n %i' /proc/[0-9]*/ns/mnt /proc/[0-9]*/ns/net 2>/dev/null |
      awk -v want="$inodes" -v self=$$ 'BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) if (w[i] != "") ok[w[i]] = 1 }
        ($2 in ok) { split($1, p, "/"); if (p[3] != self) print p[3] }' || true
    local c
    for c in /sys/fs/cgroup/pids/l7e2e-"$ID"-* /sys/fs/cgroup/unified/l7e2e-"$ID"-*; do
      [ -d "$c" ] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
    done || true
  } | sort -u | tr '\n' ' ' || true
}

# started_before SINCE PID...: the pids that started before SINCE (seconds
# since boot; empty SINCE: all of them)
started_before() {
  local since=$1 pid stat rest tck
  shift
  tck=$(getconf CLK_TCK)
  for pid in "$@"; do
    if [ -n "$since" ]; then
      stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
      rest=${stat##*) }
      # field 22 (starttime) is the 20th after the command name
      set -- $rest
      [ $(( ${20} / tck )) -le "$since" ] || continue
    fi
    printf '%s ' "$pid"
  done
}

# host_chains: the host's iptables chains a cluster could leave behind
# (kube-proxy's, CNI's, ours); the cluster's own live in its namespaces.
host_chains() {
  local t
  for t in filter nat mangle raw; do
    iptables-save -t "$t" 2>/dev/null | awk -v t="$t" '/^:/ {print t, substr($1, 2)}'
  done | grep -E ' (KUBE-|CNI-|L7|l7)' | sort || true
}

# work_pids: processes whose command line names this cluster (read by
# bash's builtins: a grep would find its own command line, and a fork per
# process is slow)
work_pids() {
  local f pid out="" args
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    [ "$pid" != $$ ] || continue
    mapfile -d '' -t args 2>/dev/null <"$f" || continue
    case "${args[*]}" in *"$WORKROOT/$ID/"* | *"l7e2e-$ID-"*) out+="$pid " ;; esac
  done
  echo "$out"
}

# leftovers: fails naming what this cluster left on the machine
leftovers() {
  local bad=""
  ip netns list | grep -q "^l7e2e-$ID-" && bad+=" netns"
  ls /run/netns/l7e2e-"$ID"-* >/dev/null 2>&1 && bad+=" netns-files"
  ls -d /sys/fs/cgroup/*/l7e2e-"$ID"-* >/dev/null 2>&1 && bad+=" cgroups"
  grep -q -F -e "$WORKROOT/$ID" -e "l7e2e-$ID-" /proc/mounts && bad+=" mounts"
  local np
  np=$(started_before "${TEARDOWN_SINCE:-}" $(ns_pids 2>/dev/null))
  if [ -n "$np" ]; then
    bad+=" processes(namespaces:$np)"
    for pid in $np; do
      log "left over: pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | head -c 200)"
    done
  fi
  local wp
  wp=$(work_pids)
  [ -z "$wp" ] || bad+=" processes($wp)"
  local before=$WORKROOT/host-chains-$ID
  if [ -f "$before" ]; then
    local new
    new=$(host_chains | comm -13 "$before" - | tr '\n' ' ')
    [ -z "$new" ] || bad+=" host-iptables-chains($new)"
    rm -f "$before"
  fi
  [ -d "$W" ] && bad+=" work-dir"
  if [ -n "$bad" ]; then
    log "FAIL: cluster $ID left over:$bad"
    return 1
  fi
  log "cluster $ID: nothing left over (processes, mounts, netns, cgroups, host iptables chains)"
}

down() {
  local d any=0 rc=0
  for d in "$WORKROOT"/*/; do
    d=${d%/}
    [ -f "$d/env" ] || [ -d "$d/ns" ] || continue
    any=1
    down_one "$(basename "$d")" || rc=1
  done
  [ $any = 1 ] || log "no cluster to remove"
  return $rc
}

# e2e_exit: the EXIT trap of `e2e`: tear down (unless kept) and fail when
# the teardown left anything behind.
e2e_exit() {
  local rc=$?
  trap - EXIT
  if [ "${E2E_KEEP:-}" = 1 ] && [ -n "${E2E_UP:-}" ]; then
    log "kept cluster $ID: hack/cluster.sh env"
    exit $rc
  fi
  local t=$SECONDS
  # only this run's cluster: another may be running beside it
  if [ -n "${ID:-}" ] && [ -d "$WORKROOT/$ID" ]; then
    down_one "$ID" || { [ $rc != 0 ] || rc=1; }
  fi
  log "down in $((SECONDS - t))s; e2e total ${SECONDS}s, exit $rc"
  exit $rc
}

e2e() {
  local rc=0 t
  trap e2e_exit EXIT
  trap 'exit 130' INT TERM
  up >/dev/null || rc=$?
  log "up in ${SECONDS}s (components, images, cluster, l7gate)"
  if [ $rc = 0 ]; then
    E2E_UP=1
    load "$ID"
    export KUBECONFIG KUBECTL HELM E2E_WORK=$W E2E_NODES=$NODES IMAGE_TAG L7GATE_IMAGE KUBE_VERSION
    export E2E_KUBE_BIN=$KUBE_BIN E2E_ID=$ID
    t=$SECONDS
    # the suite's output is kept with the components' logs
    go test -tags e2e -count=1 -timeout 40m -v ${E2E_RUN:+-run "$E2E_RUN"} ./e2e/ 2>&1 |
      tee "$W/logs/e2e-test.log" || rc=$?
    log "suite in $((SECONDS - t))s, exit $rc"
    [ $rc = 0 ] || diagnose
  fi
  return $rc
}

# take_lock: one cluster at a time on this machine (two would share node
# addresses, names and the image cache): up, down and e2e wait for
# $E2E_LOCK. A caller that already holds it (`flock /tmp/l7gate-e2e.lock
# make e2e` hands its descriptor down) is not asked again. The daemons do
# not inherit the descriptor (close_fds), so a kept cluster holds nothing.
E2E_LOCK=${E2E_LOCK:-/tmp/l7gate-e2e.lock}
take_lock() {
  local f
  for f in /proc/$$/fd/*; do
    [ "$(readlink "$f" 2>/dev/null)" = "$E2E_LOCK" ] && return 0
  done
  exec 8>>"$E2E_LOCK"
  if ! flock -n 8; then
    log "waiting for the cluster of another run on this machine to end (lock $E2E_LOCK)"
    flock 8
  fi
}

case "${1:-}" in
up) take_lock; up ;;
down) take_lock; down ;;
e2e) take_lock; e2e ;;
_fn) # debugging: run one function of this script
  shift
  "$@"
  ;;
env)
  load "$(cat "$WORKROOT/current")"
  cat "$W/env"
  ;;
*)
  echo "usage: $0 up|down|e2e|env" >&2
  exit 2
  ;;
esac
