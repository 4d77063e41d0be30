#!/usr/bin/env bash
# The test command (README, CI): install what is missing, build, start a real Kafka broker, a
# real kube-apiserver and a real single-node Kubernetes cluster with the images built from this
# checkout loaded into it, run the whole suite against them, and stop everything even when tests
# fail. Needs root (the cluster's network namespaces, iptables, mounts, cgroups).
#
#   tests/run.sh                 # everything
#   tests/run.sh -p sluice-crds  # extra arguments go to `cargo test`
#   SLUICE_SKIP_CLUSTER=1 tests/run.sh   # without the cluster tier (not allowed under CI=true)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

timings=()
phase_start=$SECONDS
phase() {  # phase NAME: close the running phase, start the next
  local now=$SECONDS
  if [[ -n "${phase_name:-}" ]]; then
    timings+=("$(printf '%-44s %5ss' "$phase_name" $((now - phase_start)))")
  fi
  phase_name=$1
  phase_start=$now
  [[ -n "$phase_name" ]] && echo "==> $phase_name" >&2
  return 0
}
report() {
  phase ""
  echo "==> phase timings" >&2
  printf '    %s\n' "${timings[@]}" >&2
}
test_log=$(mktemp)
summary() {  # the totals of every `test result:` line, as the run's closing line
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
       END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
}
measurements=$(mktemp)
export SLUICE_TEST_MEASUREMENTS=$measurements
stop_services() {
  local rc=$?
  tests/infra/kafka.sh stop >&2 || true
  tests/infra/kube.sh stop >&2 || true
  [[ -n ${cluster:-} ]] && { tests/infra/cluster.sh stop >&2 || true; }
  report
  if [[ -s $measurements ]]; then
    echo "==> measured on the real cluster" >&2
    sed 's/^/    /' "$measurements" >&2
  fi
  summary
  rm -f "$test_log" "$measurements"
  exit $rc
}

cluster=1
if [[ ${SLUICE_SKIP_CLUSTER:-} == 1 ]]; then
  [[ ${CI:-} != true && ${CI:-} != 1 ]] || { echo "SLUICE_SKIP_CLUSTER=1 is not allowed under CI" >&2; exit 1; }
  cluster=""
elif [[ $(id -u) -ne 0 ]]; then
  echo "tests/run.sh: the cluster tier needs root (run as root, or SLUICE_SKIP_CLUSTER=1 to leave it out)" >&2
  exit 1
fi

# From here on, whatever happens: stop the services (a no-op when none runs) and print timings.
trap stop_services EXIT

phase "install missing packages"
tests/infra/deps.sh

phase "fetch Kafka jars"
tests/infra/kafka.sh fetch

phase "build kube-apiserver, etcd"
tests/infra/kube.sh build

if [[ -n $cluster ]]; then
  phase "build the cluster (node, CoreDNS, volumes)"
  tests/infra/cluster.sh build
fi

phase "fetch Lambda runtime clients"
lambda_env=$(tests/infra/lambda.sh fetch)
eval "$lambda_env"

phase "build helm"
helm_env=$(tests/infra/helm.sh fetch)
eval "$helm_env"

phase "lint the Helm chart"
cmp -s crds/pipelines.sluice.dev.yaml charts/sluice/files/pipelines.sluice.dev.yaml \
  || { echo "charts/sluice/files/pipelines.sluice.dev.yaml differs from crds/: cp crds/pipelines.sluice.dev.yaml charts/sluice/files/" >&2; exit 1; }
"$SLUICE_TEST_HELM" lint --strict charts/sluice
"$SLUICE_TEST_HELM" template sluice charts/sluice >/dev/null
"$SLUICE_TEST_HELM" template sluice charts/sluice --set 'watchNamespaces={a,b}' >/dev/null

phase "check formatting"
cargo fmt --all --check

# One set of targets for every step, so that features unify the same way each time and the C++
# of RocksDB and librdkafka is compiled once: `--all-targets` would add the bench profile (built
# like release: a second RocksDB build), and a separate `--bins` build a third.
targets=(--workspace --locked --lib --bins --tests --examples)

phase "build (binaries and tests)"
cargo build "${targets[@]}"
cargo test --workspace --locked --no-run "$@"

phase "clippy"
cargo clippy "${targets[@]}" -- -D warnings

phase "check CRD is up to date"
"$CARGO_TARGET_DIR/debug/sluice-operator" crd | diff -u "crds/pipelines.sluice.dev.yaml" - \
  || { echo "crds/pipelines.sluice.dev.yaml is out of date: cargo run -p sluice-operator -- crd > crds/pipelines.sluice.dev.yaml" >&2; exit 1; }

if [[ -n $cluster ]]; then
  phase "build images"
  # The test build's binaries (stripped of debug info), in the images users get from a release
  # build: one set of compiled targets for the whole run.
  images_dir=$CARGO_TARGET_DIR/images
  # Under a repository of their own: the operator's built-in default image is never what the
  # tests run, so the chart's image values must reach the operator and the pods it renders.
  image_lines=$(images/build.sh --binaries "$CARGO_TARGET_DIR/debug" --repository localhost/sluice-e2e "$images_dir")
  echo "$image_lines" >&2
  SLUICE_TEST_IMAGE=$(awk '$1 == "sluice" {print $2}' <<<"$image_lines")
  SLUICE_TEST_SETTLE_IMAGE=$(awk '$1 == "settle" {print $2}' <<<"$image_lines")
  export SLUICE_TEST_IMAGE SLUICE_TEST_SETTLE_IMAGE

  phase "start the cluster"
  cluster_env=$(tests/infra/cluster.sh start)
  eval "$cluster_env"
  tests/infra/cluster.sh load "$images_dir/sluice.tar" "$images_dir/settle.tar"
fi

# After the cluster: the broker then also listens on the node's address, for pods.
phase "start Kafka"
kafka_env=$(tests/infra/kafka.sh start)
eval "$kafka_env"
phase "start kube-apiserver"
kube_env=$(tests/infra/kube.sh start)
eval "$kube_env"
echo "==> real services: Apache Kafka $SLUICE_TEST_KAFKA_VERSION at $SLUICE_TEST_BOOTSTRAP; Kubernetes $SLUICE_TEST_KUBE_VERSION (kubeconfig $SLUICE_TEST_KUBECONFIG)" >&2
if [[ -n $cluster ]]; then
  echo "==> real cluster: Kubernetes $SLUICE_TEST_CLUSTER_VERSION node at $SLUICE_TEST_CLUSTER_NODE_IP, Kafka for pods at $SLUICE_TEST_CLUSTER_BOOTSTRAP, images $SLUICE_TEST_IMAGE and $SLUICE_TEST_SETTLE_IMAGE" >&2
fi

phase "cargo test"
cargo test --workspace --locked "$@" 2>&1 | tee "$test_log"

if (($# == 0)); then
  phase "quickstart (the README's first command)"
  tests/quickstart-check.sh
fi
