#!/usr/bin/env bash
# A real single-node Kubernetes cluster for the end-to-end tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (iptables) from the pinned Go
# module (tests/infra/kube/go.mod), Debian's containerd and runc, the CNI bridge, CoreDNS and
# rancher's local-path-provisioner (default StorageClass `local-path`) from their Go modules.
# Pods run for real; images come from archives loaded into the node (no registry).
#
#   cluster.sh build            build and cache the binaries and images (~/.cache/sluice) if missing
#   cluster.sh start            start everything; prints the export lines tests read
#   cluster.sh env              print the export lines of the running cluster
#   cluster.sh load ARCHIVE...  import image archives (images/build.sh) into the node
#   cluster.sh node-ip          print the node's address when the cluster runs (kafka.sh uses it)
#   cluster.sh stop             stop everything and leave the host as it was found
#
# Needs root (network namespaces, iptables, mounts, cgroups). One cluster per machine: the node
# address 10.201.0.1 (on lo), the bridge cni0, pods 10.244.0.0/24, Services 10.96.0.0/16 and
# the ports 2379/2380, 6443, 10248/10250/10256/10257/10259 are fixed. Pods reach each other,
# Services and the node address (where kafka.sh also listens); nothing they send leaves the
# machine. `stop` removes the processes (by pid), the pods' network namespaces, the bridge, our
# iptables rules, the node address, the mounts and cgroups the kubelet made, and restores the
# sysctls the kubelet and we changed.
#
# stdout carries only `export` lines; progress goes to stderr. Use it as
#   exports=$(tests/infra/cluster.sh start) && eval "$exports"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
module_dir=$here/kube

# Keep in step with tests/infra/kube/go.mod and kube.sh.
K8S_VERSION=v1.37.1
COREDNS_VERSION=v1.15.0
LOCAL_PATH_VERSION=v0.0.30

cache_root=${SLUICE_CACHE:-$HOME/.cache/sluice}
bin=$cache_root/kube                      # shared with kube.sh (kube-apiserver, etcd)
images=$cache_root/cluster-images
run=${SLUICE_RUN_DIR:-$HOME/.cache/sluice/run}/cluster
pki=$run/pki
sock=$run/containerd/containerd.sock

NODE=sluice-node
NODE_IP=10.201.0.1
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
APISERVER_PORT=6443

PAUSE_IMAGE=localhost/sluice-test/pause:3.10
BUSYBOX_IMAGE=localhost/sluice-test/busybox:1
COREDNS_IMAGE=localhost/sluice-test/coredns:$COREDNS_VERSION
PROVISIONER_IMAGE=localhost/sluice-test/local-path-provisioner:$LOCAL_PATH_VERSION

# Host settings the kubelet (or we) change: saved at start, put back at stop.
saved_sysctls=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
host_paths=(/var/log/containers /var/log/pods /var/lib/cni /run/containerd /var/run/netns /opt/containerd)

log() { echo "cluster.sh: $(date +%T) $*" >&2; }
die() { log "$*"; exit 1; }
kubectl() { "$bin/kubectl-$K8S_VERSION" --kubeconfig "$run/admin.kubeconfig" "$@"; }
ctr() { command ctr -a "$sock" -n k8s.io "$@"; }

# ---------------------------------------------------------------- build

node_binaries=(kubelet kube-controller-manager kube-scheduler kube-proxy kubectl)

build() {
  mkdir -p "$bin" "$images"
  # One build at a time (kube.sh takes its own lock for the apiserver and etcd).
  exec 8>"$bin/.cluster-build.lock"
  flock 8
  "$here/kube.sh" build
  command -v go >/dev/null || die "Go is required to build the node binaries"
  local missing=() b
  for b in "${node_binaries[@]}"; do [[ -x $bin/$b-$K8S_VERSION ]] || missing+=("$b"); done
  if ((${#missing[@]})); then
    local started=$SECONDS tmp=$bin/.node-build.$$ pkgs=()
    log "building ${missing[*]} $K8S_VERSION (first time only; about 15 minutes on 2 cores)"
    for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    mkdir -p "$tmp"
    local minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    # Without -X the binaries report v0.0.0-master.
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    # One invocation: the packages the binaries share are compiled once.
    (cd "$module_dir" && CGO_ENABLED=0 GOFLAGS=-mod=readonly nice -n 10 \
      go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}") >&2 || { rm -rf "$tmp"; die "building the node binaries failed"; }
    for b in "${missing[@]}"; do mv -f "$tmp/$b" "$bin/$b-$K8S_VERSION"; done
    rm -rf "$tmp"
    log "built ${missing[*]} in $((SECONDS - started))s"
  fi
  go_install coredns github.com/coredns/coredns "$COREDNS_VERSION"
  go_install local-path-provisioner github.com/rancher/local-path-provisioner "$LOCAL_PATH_VERSION"
  build_images
  flock -u 8
}

go_install() {  # go_install NAME MODULE VERSION
  local out=$bin/$1-$3
  [[ -x $out ]] && return 0
  local started=$SECONDS tmp=$bin/.gobin.$$
  log "building $2@$3 (first time only; a few minutes)"
  # Outside any module: its own go.mod and go.sum, verified by the Go checksum database.
  (cd / && GOBIN=$tmp CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 go install -trimpath -ldflags '-s -w' "$2@$3" 2>&1 |
    { grep -v '^go: downloading' || true; }) >&2
  [[ -x $tmp/$1 ]] || { rm -rf "$tmp"; die "building $2@$3 failed"; }
  mv -f "$tmp/$1" "$out"
  rm -rf "$tmp"
  log "built $1 $3 in $((SECONDS - started))s"
}

build_images() {
  local oci=$here/../../images/oci.py work
  work=$(mktemp -d)
  # pause: the sandbox process, from k8s.io/kubernetes' own source, linked statically.
  if [[ ! -s $images/pause.tar ]]; then
    local src
    src=$(cd "$module_dir" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    mkdir -p "$work/pause"
    gcc -Os -static -Wall -Werror -DVERSION=v3.10-sluice -o "$work/pause/pause" "$src" && strip "$work/pause/pause"
    python3 "$oci" "$images/pause.tar" --name "$PAUSE_IMAGE" --layer "$work/pause" --entrypoint '["/pause"]' >&2
  fi
  # busybox: Debian's static busybox (kept as a directory: it is also the provisioner's base).
  local bb=$images/busybox-root
  if [[ ! -x $bb/bin/busybox ]]; then
    rm -rf "$bb" && mkdir -p "$work/deb" "$bb/bin" "$bb/tmp" "$bb/etc"
    (cd "$work/deb" && { apt-get download busybox-static >/dev/null 2>&1 ||
      { apt-get update -qq >&2 && apt-get download busybox-static >/dev/null; }; }) || die "apt-get download busybox-static failed"
    dpkg-deb -x "$work"/deb/busybox-static_*.deb "$work/x"
    cp "$work/x/bin/busybox" "$bb/bin/"
    local a
    for a in $("$bb/bin/busybox" --list); do [[ $a == busybox ]] || ln -sf busybox "$bb/bin/$a"; done
    echo 'root:x:0:0:root:/:/bin/sh' >"$bb/etc/passwd"
    echo 'root:x:0:' >"$bb/etc/group"
    chmod 1777 "$bb/tmp"
    rm -f "$images/busybox.tar" "$images/local-path-provisioner-$LOCAL_PATH_VERSION.tar"
  fi
  [[ -s $images/busybox.tar ]] ||
    python3 "$oci" "$images/busybox.tar" --name "$BUSYBOX_IMAGE" --layer "$bb" --cmd '["/bin/sh"]' >&2
  if [[ ! -s $images/coredns-$COREDNS_VERSION.tar ]]; then
    mkdir -p "$work/coredns"
    cp "$bin/coredns-$COREDNS_VERSION" "$work/coredns/coredns"
    python3 "$oci" "$images/coredns-$COREDNS_VERSION.tar" --name "$COREDNS_IMAGE" --layer "$work/coredns" \
      --entrypoint '["/coredns"]' >&2
  fi
  if [[ ! -s $images/local-path-provisioner-$LOCAL_PATH_VERSION.tar ]]; then
    mkdir -p "$work/lpp/usr/local/bin"
    cp "$bin/local-path-provisioner-$LOCAL_PATH_VERSION" "$work/lpp/usr/local/bin/local-path-provisioner"
    # Its helper pods' scripts need a shell: on busybox's layer.
    python3 "$oci" "$images/local-path-provisioner-$LOCAL_PATH_VERSION.tar" --name "$PROVISIONER_IMAGE" \
      --layer "$bb" --layer "$work/lpp" >&2
  fi
  rm -rf "$work"
}

# ---------------------------------------------------------------- start

spawn() {  # spawn NAME CMD...: in its own session; pid in $run/NAME.pid, output in $run/NAME.log
  local name=$1; shift
  setsid nohup "$@" >"$run/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

wait_for() {  # wait_for SECONDS NAME DESCRIPTION CMD...: fail fast when NAME's process died
  local deadline=$((SECONDS + $1)) name=$2 what=$3; shift 3
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$run/$name.pid")" 2>/dev/null || { log "$name died waiting for $what"; tail -n 30 "$run/$name.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { log "timed out waiting for $what"; tail -n 30 "$run/$name.log" >&2; exit 1; }
    sleep 0.3
  done
}

certificates() {
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=sluice-test-cluster-ca" 2>/dev/null
    sign() {  # sign NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      { echo 'basicConstraints=CA:FALSE'; echo 'keyUsage=digitalSignature,keyEncipherment'
        echo "extendedKeyUsage=$3"; [[ -n "${4:-}" ]] && echo "subjectAltName=$4"; } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -out "$1.crt" -extfile "$1.ext" 2>/dev/null
    }
    sign apiserver /CN=kube-apiserver serverAuth \
      "IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    sign admin "/O=system:masters/CN=sluice-test-admin" clientAuth
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    sign controller-manager /CN=system:kube-controller-manager clientAuth
    sign scheduler /CN=system:kube-scheduler clientAuth
    sign kube-proxy /CN=system:kube-proxy clientAuth
    sign kubelet "/O=system:nodes/CN=system:node:$NODE" clientAuth
    sign kubelet-serving "/CN=$NODE" serverAuth "IP:$NODE_IP,DNS:$NODE"
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
    openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

kubeconfig() {  # kubeconfig NAME CERT
  local b64
  b64() { base64 -w0 <"$1"; }
  cat >"$run/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sluice-test-cluster
  cluster: {server: "https://$NODE_IP:$APISERVER_PORT", certificate-authority-data: "$(b64 "$pki/ca.crt")"}
users:
- name: $1
  user: {client-certificate-data: "$(b64 "$pki/$2.crt")", client-key-data: "$(b64 "$pki/$2.key")"}
contexts:
- name: sluice-test-cluster
  context: {cluster: sluice-test-cluster, user: $1, namespace: default}
current-context: sluice-test-cluster
EOF
}

# (Not `ip | grep -q`: under pipefail, grep's early exit fails the pipeline now and then.)
node_address_on_lo() { [[ $(ip addr show dev lo) == *" $NODE_IP/"* ]]; }

host_network() {
  node_address_on_lo || ip addr add "$NODE_IP/32" dev lo
  # What the kubelet (and we) change, to put back at stop.
  # As `key = value` lines (a key this kernel lacks is left out, not shifted into the next).
  [[ -f $run/sysctl.saved ]] || sysctl "${saved_sysctls[@]}" 2>/dev/null >"$run/sysctl.saved" || true
  # Host paths the kubelet, containerd and the CNI plugins make when missing: removed at stop
  # only if they were not there before.
  if [[ ! -f $run/created-paths ]]; then
    local p
    for p in "${host_paths[@]}"; do [[ -e $p ]] || echo "$p"; done >"$run/created-paths"
  fi
  sysctl -qw net.ipv4.ip_forward=1
  # A pod's request to a Service whose endpoint is on the same bridge comes back bridged: it
  # must pass iptables to be un-NATed (br_netfilter), or the reply has the wrong source.
  # The module that makes bridged traffic pass iptables: loaded if missing (and unloaded at stop).
  if [[ ! -f /proc/sys/net/bridge/bridge-nf-call-iptables ]] && modprobe br_netfilter 2>/dev/null; then
    touch "$run/br_netfilter.loaded"
  fi
  if [[ -f /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    [[ -f $run/bridge.saved ]] || cat /proc/sys/net/bridge/bridge-nf-call-iptables >"$run/bridge.saved"
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  else
    log "warning: br_netfilter is not loaded (modprobe br_netfilter): pods may not reach Services whose pods share the node"
  fi
  # Pods may reach the node and each other, never another machine.
  iptables -C FORWARD -i cni0 ! -o cni0 -j DROP 2>/dev/null || iptables -I FORWARD 1 -i cni0 ! -o cni0 -j DROP
  mkdir -p "$run/cni/net.d" "$run/cni-ipam"
  cat >"$run/cni/net.d/10-sluice.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sluice-test",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$run/cni-ipam",
              "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "10.244.0.1"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

start_containerd() {
  mkdir -p "$run/containerd"
  cat >"$run/containerd/config.toml" <<EOF
version = 2
root = "$run/containerd/root"
state = "$run/containerd/state"
oom_score = 0
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  # Machines without CAP_SYS_RESOURCE refuse negative oom_score_adj, and with it every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$run/containerd/opt"
EOF
  spawn containerd containerd --config "$run/containerd/config.toml"
  wait_for 30 containerd "containerd" command ctr -a "$sock" version
  local img
  for img in "$images/pause.tar" "$images/busybox.tar" "$images/coredns-$COREDNS_VERSION.tar" \
             "$images/local-path-provisioner-$LOCAL_PATH_VERSION.tar"; do
    ctr images import "$img" >/dev/null
  done
}

start() {
  local t0=$SECONDS
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, iptables, mounts, cgroups)"
  for b in "${node_binaries[@]}"; do [[ -x $bin/$b-$K8S_VERSION ]] || die "$b is not built: run cluster.sh build"; done
  [[ -s $images/pause.tar ]] || die "the images are not built: run cluster.sh build"
  if [[ -f $run/apiserver.pid ]]; then
    log "a cluster from $run seems to run; stopping it first"
    stop
  fi
  rm -rf "$run"
  mkdir -p "$run" "$run/volumes"
  certificates
  local c
  for c in admin:admin controller-manager:controller-manager scheduler:scheduler kube-proxy:kube-proxy kubelet:kubelet; do
    kubeconfig "${c%%:*}" "${c#*:}"
  done
  host_network

  spawn etcd "$bin/etcd-v3.7.0" --name "$NODE" --data-dir "$run/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE=http://127.0.0.1:2380" \
    --quota-backend-bytes 2147483648 --unsafe-no-fsync --log-level warn
  start_containerd &   # beside the control plane
  local containerd_job=$!
  wait_for 30 etcd "etcd" curl -sf http://127.0.0.1:2379/health

  spawn apiserver "$bin/kube-apiserver-$K8S_VERSION" \
    --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
    --service-cluster-ip-range "$SVC_CIDR" \
    --authorization-mode Node,RBAC \
    --client-ca-file "$pki/ca.crt" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --allow-privileged=true --profiling=false --v=1
  wait_for 120 apiserver "kube-apiserver /readyz" \
    curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://$NODE_IP:$APISERVER_PORT/readyz"
  log "kube-apiserver ready after $((SECONDS - t0))s"

  spawn controller-manager "$bin/kube-controller-manager-$K8S_VERSION" \
    --kubeconfig "$run/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$run/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$run/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SVC_CIDR" --profiling=false --v=1
  spawn scheduler "$bin/kube-scheduler-$K8S_VERSION" \
    --kubeconfig "$run/scheduler.kubeconfig" \
    --authentication-kubeconfig "$run/scheduler.kubeconfig" \
    --authorization-kubeconfig "$run/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1

  wait "$containerd_job" || die "containerd did not start"
  mkdir -p "$run/kubelet" "$run/pod-logs"
  cat >"$run/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
clusterDomain: cluster.local
clusterDNS: ["$DNS_IP"]
resolvConf: ""
# No CAP_SYS_RESOURCE on these machines: no negative scores.
oomScoreAdj: 0
podLogsDir: "$run/pod-logs"
# Loaded images are never pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
maxPods: 60
syncFrequency: 10s
fileCheckFrequency: 10s
EOF
  spawn kubelet "$bin/kubelet-$K8S_VERSION" --config "$run/kubelet.yaml" --kubeconfig "$run/kubelet.kubeconfig" \
    --root-dir "$run/kubelet" --hostname-override "$NODE" --node-ip "$NODE_IP" --v=1

  cat >"$run/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$run/kube-proxy.kubeconfig"}
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's sysctls alone: no conntrack changes, no route_localnet.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
nodePortAddresses: [primary]
EOF
  spawn kube-proxy "$bin/kube-proxy-$K8S_VERSION" --config "$run/kube-proxy.yaml" --v=1

  wait_for 120 kubelet "node $NODE Ready" node_ready
  # Pods are refused until the controller-manager has made the `default` ServiceAccount.
  wait_for 60 controller-manager "the default ServiceAccount" kubectl -n default get serviceaccount default

  # Cluster add-ons: DNS and dynamic volumes.
  sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|" -e "s|@DNS_IP@|$DNS_IP|" "$here/cluster/coredns.yaml" | kubectl apply -f - >/dev/null
  sed -e "s|@PROVISIONER_IMAGE@|$PROVISIONER_IMAGE|" -e "s|@BUSYBOX_IMAGE@|$BUSYBOX_IMAGE|" \
    -e "s|@VOLUMES@|$run/volumes|" "$here/cluster/local-path.yaml" | kubectl apply -f - >/dev/null
  kubectl -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null \
    || { kubectl -n kube-system describe pods >&2; die "CoreDNS did not become ready"; }
  kubectl -n local-path-storage rollout status deploy/local-path-provisioner --timeout=120s >/dev/null \
    || { kubectl -n local-path-storage describe pods >&2; die "local-path-provisioner did not become ready"; }
  # Names resolve from a pod: a Service, through the kube-dns Service.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: dns-check, namespace: kube-system}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - {name: check, image: $BUSYBOX_IMAGE, imagePullPolicy: Never,
     command: [nslookup, kubernetes.default.svc.cluster.local, $DNS_IP]}
EOF
  local phase=""
  for _ in $(seq 1 120); do
    phase=$(kubectl -n kube-system get pod dns-check -o jsonpath='{.status.phase}' 2>/dev/null || true)
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 0.5
  done
  [[ $phase == Succeeded ]] || { kubectl -n kube-system logs dns-check >&2 || true; die "DNS does not resolve from a pod"; }
  kubectl -n kube-system delete pod dns-check --wait=false >/dev/null
  write_env
  log "node $NODE Ready with DNS and volumes after $((SECONDS - t0))s"
  cat "$run/env"
}

write_env() {
  {
    echo "export SLUICE_TEST_CLUSTER_KUBECONFIG=$run/admin.kubeconfig"
    echo "export SLUICE_TEST_CLUSTER_KUBECTL=$bin/kubectl-$K8S_VERSION"
    echo "export SLUICE_TEST_CLUSTER_NODE_IP=$NODE_IP"
    echo "export SLUICE_TEST_CLUSTER_VERSION=$K8S_VERSION"
  } >"$run/env"
}

node_ready() {
  [[ $(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# ---------------------------------------------------------------- load, env

load() {
  [[ -S $sock ]] || die "the cluster is not running"
  local a
  for a in "$@"; do
    [[ -f $a ]] || die "$a: no such archive"
    ctr images import "$a" >&2
  done
}

# ---------------------------------------------------------------- stop

stop_one() {  # stop_one NAME: by the pid we recorded, and only if it still runs what we started
  local pidfile=$run/$1.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  local cmdline=""
  [[ -r /proc/$pid/cmdline ]] && cmdline=$(tr '\0' ' ' </proc/"$pid"/cmdline)
  if [[ $cmdline == "$bin/"* || $cmdline == "containerd --config $run/"* ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    log "stopped $1 ($pid)"
  fi
  rm -f "$pidfile"
}

stop() {
  stop_one kube-proxy
  stop_one kubelet
  # Pods outlive the kubelet: kill their containers through containerd, remembering their
  # network namespaces (nobody runs the CNI DEL the kubelet would have).
  local netns=()
  if [[ -S $sock && -f $run/containerd.pid ]]; then
    mapfile -t netns < <(for c in $(ctr containers ls -q 2>/dev/null); do ctr containers info "$c" 2>/dev/null; done |
      python3 -c 'import json, sys
dec, s, i = json.JSONDecoder(), sys.stdin.read(), 0
while i < len(s):
    if s[i].isspace():
        i += 1
        continue
    o, i = dec.raw_decode(s, i)
    for n in o.get("Spec", {}).get("linux", {}).get("namespaces", []):
        if n.get("type") == "network" and n.get("path", "").startswith("/var/run/netns/cni-"):
            print(n["path"])' | sort -u)
    local c
    for c in $(ctr containers ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr containers ls -q 2>/dev/null); do
      ctr tasks delete -f "$c" >/dev/null 2>&1 || true
      ctr containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_one scheduler
  stop_one controller-manager
  stop_one apiserver
  stop_one etcd
  stop_one containerd
  # Shims left behind by containerd: only those serving our socket.
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io" || true); do
    [[ $(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null) == *"-address $sock"* ]] && kill -KILL "$p" 2>/dev/null || true
  done
  # Network: kube-proxy's and the kubelet's chains, our FORWARD rule, the pods' netns, the bridge,
  # the node address.
  local t v
  for v in iptables ip6tables; do
    command -v "$v-save" >/dev/null || continue
    for t in nat filter mangle; do
      [[ $("$v-save" -t "$t" 2>/dev/null) == *KUBE-* ]] || continue
      "$v-save" -t "$t" | grep -v -- 'KUBE-' | "$v-restore" 2>/dev/null || true
    done
  done
  iptables -D FORWARD -i cni0 ! -o cni0 -j DROP 2>/dev/null || true
  local n
  for n in "${netns[@]}"; do ip netns delete "$(basename "$n")" 2>/dev/null || true; done
  ip link del cni0 2>/dev/null || true
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  if [[ -f $run/sysctl.saved ]]; then
    local key value
    while IFS=' =' read -r key value; do
      [[ -n $key && -n $value ]] && { sysctl -qw "$key=$value" || true; }
    done <"$run/sysctl.saved"
  fi
  # What the kubelet and the CNI plugins left in host paths: the container log links into our
  # run directory, our network's cached results; whole directories only if we made them.
  if [[ -d /var/log/containers ]]; then find /var/log/containers -maxdepth 1 -lname "$run/*" -delete 2>/dev/null || true; fi
  if [[ -d /var/lib/cni/results ]]; then find /var/lib/cni/results -maxdepth 1 -name 'sluice-test-*' -delete 2>/dev/null || true; fi
  local created=()
  [[ -f $run/created-paths ]] && mapfile -t created <"$run/created-paths"
  if [[ -f $run/bridge.saved && -f /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables="$(cat "$run/bridge.saved")"
  fi
  if [[ -f $run/br_netfilter.loaded ]]; then modprobe -r br_netfilter 2>/dev/null || true; fi
  # The (empty) cgroups the kubelet made, in every hierarchy.
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # Mounts under the run directory (volumes, secrets, overlay snapshots), deepest first.
  if [[ -d $run ]]; then
    { grep -o " $run/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$run"
  fi
  local p
  for p in "${created[@]}"; do [[ -n $p ]] && { rm -rf "$p" 2>/dev/null || true; }; done
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  env) [[ -f $run/env && -f $run/apiserver.pid ]] || die "the cluster is not running"; cat "$run/env" ;;
  load) shift; load "$@" ;;
  node-ip) if [[ -f $run/apiserver.pid ]] && node_address_on_lo; then echo "$NODE_IP"; fi ;;
  stop) stop ;;
  *) echo "usage: cluster.sh {build|start|env|load ARCHIVE...|node-ip|stop}" >&2; exit 2 ;;
esac
