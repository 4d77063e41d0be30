#!/usr/bin/env bash
# Install what building and testing Sluice needs and the machine lacks (Debian/Ubuntu, as root
# or with sudo). Safe to run again: it installs only what is missing and says what it did.
set -euo pipefail

packages=(
  build-essential pkg-config cmake   # C/C++ toolchain for librdkafka and RocksDB
  libclang-dev                       # bindgen for RocksDB
  libssl-dev                         # librdkafka's ssl feature (SCRAM, TLS)
  openssl curl python3 python3-pip   # test infrastructure: certificates, readiness checks, free ports, wheels
  # The real single-node cluster (tests/infra/cluster.sh) and the daemonless images (images/build.sh)
  containerd runc containernetworking-plugins iptables conntrack iproute2 mmdebstrap
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The JDK and Maven run the test Kafka broker; Go builds the test kube-apiserver and etcd.
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)

if ((${#missing[@]})); then
  echo "deps.sh: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

need() { command -v "$1" >/dev/null || { echo "deps.sh: $1 is required: $2" >&2; exit 1; }; }
need cargo "install Rust with rustup (https://rustup.rs)"
need go "install Go 1.24 or newer (the Kubernetes 1.37 modules need it)"
need java "install a JDK 17 or newer"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [[ "$go_minor" =~ ^[0-9]+$ ]] && ((go_minor < 24)); then
  echo "deps.sh: Go $(go env GOVERSION) is too old; Kubernetes 1.37 needs Go 1.24 or newer" >&2
  exit 1
fi
for component in rustfmt clippy; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component" >&2
done
echo "deps.sh: everything needed is installed" >&2
