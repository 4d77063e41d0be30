#!/usr/bin/env bash
# The test command (README, CI): install what is missing, build, start a real Kafka broker and a
# real kube-apiserver, run the whole suite against them, and stop both even when tests fail.
#
#   tests/run.sh                 # everything
#   tests/run.sh -p sluice-crds  # extra arguments go to `cargo test`
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
    timings+=("$(printf '%-28s %5ss' "$phase_name" $((now - phase_start)))")
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
stop_services() {
  local rc=$?
  tests/infra/kafka.sh stop >&2 || true
  tests/infra/kube.sh stop >&2 || true
  report
  summary
  rm -f "$test_log"
  exit $rc
}

# From here on, whatever happens: stop the services (a no-op when none runs) and print timings.
trap stop_services EXIT

phase "install missing packages"
tests/infra/deps.sh

phase "fetch Kafka jars"
tests/infra/kafka.sh fetch

phase "build kube-apiserver, etcd"
tests/infra/kube.sh build

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

phase "start Kafka"
kafka_env=$(tests/infra/kafka.sh start)
eval "$kafka_env"
phase "start kube-apiserver"
kube_env=$(tests/infra/kube.sh start)
eval "$kube_env"
echo "==> real services: Apache Kafka $SLUICE_TEST_KAFKA_VERSION at $SLUICE_TEST_BOOTSTRAP; Kubernetes $SLUICE_TEST_KUBE_VERSION (kubeconfig $SLUICE_TEST_KUBECONFIG)" >&2

phase "cargo test"
cargo test --workspace --locked "$@" 2>&1 | tee "$test_log"
