#!/usr/bin/env bash
# A real Kubernetes API server for the integration tests: kube-apiserver and etcd, built from
# their Go modules at pinned versions (tests/infra/kube/go.mod), on loopback, with RBAC enforced.
# No kubelet, scheduler or controller-manager: objects are stored and validated for real, pods
# never run, and nothing garbage-collects owner references.
#
#   kube.sh build   build and cache the binaries (~/.cache/sluice/kube) if missing
#   kube.sh start   (re)start on free ports; prints the export lines tests read
#   kube.sh env     print the export lines of the running apiserver
#   kube.sh stop    stop both and remove the run directory
#
# stdout carries only the `export` lines; progress goes to stderr. Use it as
#   exports=$(tests/infra/kube.sh start) && eval "$exports"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
module_dir=$here/kube

# Keep these in step with tests/infra/kube/go.mod.
K8S_VERSION=v1.37.1
ETCD_VERSION=v3.7.0

cache=${SLUICE_CACHE:-$HOME/.cache/sluice}/kube
run=${SLUICE_RUN_DIR:-$HOME/.cache/sluice/run}/kube
apiserver_bin=$cache/kube-apiserver-$K8S_VERSION
etcd_bin=$cache/etcd-$ETCD_VERSION

log() { echo "kube.sh: $*" >&2; }
die() { log "$*"; exit 1; }

build_one() {  # build_one OUTPUT PACKAGE [LDFLAGS]
  local out=$1 pkg=$2 ldflags=${3:-} started=$SECONDS
  # A kube-apiserver built without the version stamp reports v0.0.0-master, which kubectl
  # cannot parse: such a cached binary is rebuilt.
  if [[ -x "$out" ]] && { [[ -z $ldflags ]] || ! "$out" --version 2>/dev/null | grep -q 'v0.0.0'; }; then
    return 0
  fi
  command -v go >/dev/null || die "Go is required to build $pkg (install Go 1.26 or newer)"
  log "building $pkg into $out (first time only; several minutes)"
  (cd "$module_dir" && GOFLAGS=-mod=readonly go build -trimpath ${ldflags:+-ldflags "$ldflags"} -o "$out.tmp.$$" "$pkg") >&2 \
    || { rm -f "$out.tmp.$$"; die "building $pkg failed"; }
  mv -f "$out.tmp.$$" "$out"
  log "built $(basename "$out") in $((SECONDS - started))s"
}

build() {
  mkdir -p "$cache"
  # One build at a time, even when several callers race.
  exec 9>"$cache/.build.lock"
  flock 9
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  build_one "$apiserver_bin" k8s.io/kubernetes/cmd/kube-apiserver \
    "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  build_one "$etcd_bin" go.etcd.io/etcd/server/v3
  flock -u 9
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# is_ours PIDFILE BINARY: the pid in PIDFILE is alive and runs BINARY (never signal a reused pid).
is_ours() {
  local pidfile=$1 binary=$2 pid
  [[ -f "$pidfile" ]] || return 1
  pid=$(cat "$pidfile")
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' </proc/"$pid"/cmdline | grep -q -- "$binary"
}

stop_one() {  # stop_one NAME PIDFILE BINARY
  local name=$1 pidfile=$2 binary=$3 pid
  is_ours "$pidfile" "$binary" || return 0
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.2
  done
  log "$name (pid $pid) did not stop within 30s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  stop_one kube-apiserver "$run/apiserver.pid" "$apiserver_bin"
  stop_one etcd "$run/etcd.pid" "$etcd_bin"
  rm -rf "$run"
}

certificates() {
  local d=$run/pki
  mkdir -p "$d"
  cd "$d"
  # EC P-256 keys: generated in milliseconds, accepted by the apiserver for serving, clients and
  # service-account token signing (ES256).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=sluice-test-ca" 2>/dev/null
  sign() {  # sign NAME SUBJECT EXTENSIONS
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -out "$1.crt" -extfile "$1.ext" 2>/dev/null
  }
  sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
    'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local')"
  sign admin "/O=system:masters/CN=sluice-admin" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=clientAuth')"
  openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
  openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

write_kubeconfig() {  # write_kubeconfig PORT
  local d=$run/pki
  b64() { base64 -w0 <"$1"; }
  cat >"$run/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sluice-test
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $(b64 "$d/ca.crt")
users:
- name: sluice-admin
  user:
    client-certificate-data: $(b64 "$d/admin.crt")
    client-key-data: $(b64 "$d/admin.key")
contexts:
- name: sluice-test
  context: {cluster: sluice-test, user: sluice-admin, namespace: default}
current-context: sluice-test
EOF
}

tail_logs() {
  for f in "$run/etcd.log" "$run/apiserver.log"; do
    [[ -f "$f" ]] && { echo "---- last lines of $f" >&2; tail -n 40 "$f" >&2; }
  done
  return 0
}

wait_until() {  # wait_until SECONDS PIDFILE DESCRIPTION COMMAND...: fail fast if the process dies
  local deadline=$((SECONDS + $1)) pidfile=$2 what=$3
  shift 3
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { log "the process died while waiting for $what"; tail_logs; exit 1; }
    ((SECONDS < deadline)) || { log "timed out waiting for $what"; tail_logs; exit 1; }
    sleep 0.3
  done
}

start() {
  build
  command -v openssl >/dev/null || die "openssl is required (tests/infra/deps.sh installs it)"
  stop
  mkdir -p "$run"
  local started=$SECONDS
  certificates

  local etcd_client etcd_peer apiserver_port
  etcd_client=$(free_port)
  etcd_peer=$(free_port)
  apiserver_port=$(free_port)

  log "starting etcd $ETCD_VERSION on 127.0.0.1:$etcd_client"
  # --unsafe-no-fsync: a test store that is thrown away after the run; fsync only slows tests.
  setsid nohup "$etcd_bin" \
    --name sluice-test --data-dir "$run/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "sluice-test=http://127.0.0.1:$etcd_peer" \
    --quota-backend-bytes 1073741824 --unsafe-no-fsync --log-level warn \
    >"$run/etcd.log" 2>&1 </dev/null &
  echo $! >"$run/etcd.pid"
  wait_until 30 "$run/etcd.pid" "etcd to be healthy" curl -sf "http://127.0.0.1:$etcd_client/health"

  local d=$run/pki
  log "starting kube-apiserver $K8S_VERSION on 127.0.0.1:$apiserver_port"
  # RBAC is enforced (tests run clients under ServiceAccount tokens). The ServiceAccount
  # admission plugin is off: without the controller-manager no namespace gets its `default`
  # ServiceAccount, and the plugin would refuse every pod that tests create as stand-ins for a
  # StatefulSet controller. The TokenRequest API works regardless. No endpoint reconciler: it
  # refuses a loopback advertise address, and nothing in the tests reaches the apiserver through
  # the `kubernetes` Service.
  setsid nohup "$apiserver_bin" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$apiserver_port" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --authorization-mode RBAC \
    --client-ca-file "$d/ca.crt" \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --disable-admission-plugins ServiceAccount \
    --allow-privileged=true \
    --profiling=false \
    --v=1 \
    >"$run/apiserver.log" 2>&1 </dev/null &
  echo $! >"$run/apiserver.pid"
  wait_until 120 "$run/apiserver.pid" "kube-apiserver /readyz" curl -sf --cacert "$d/ca.crt" --cert "$d/admin.crt" --key "$d/admin.key" \
    "https://127.0.0.1:$apiserver_port/readyz"

  write_kubeconfig "$apiserver_port"
  printf 'export SLUICE_TEST_KUBECONFIG=%s\nexport SLUICE_TEST_KUBE_VERSION=%s\n' "$run/kubeconfig" "$K8S_VERSION" >"$run/env"
  log "kube-apiserver ready after $((SECONDS - started))s (kubeconfig $run/kubeconfig)"
  cat "$run/env"
}

env_lines() {
  is_ours "$run/apiserver.pid" "$apiserver_bin" && [[ -f "$run/env" ]] || die "no kube-apiserver running from $run"
  cat "$run/env"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  env) env_lines ;;
  stop) stop ;;
  *) echo "usage: kube.sh {build|start|env|stop}" >&2; exit 2 ;;
esac
