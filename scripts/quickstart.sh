#!/usr/bin/env bash
# The README's first command: run the seed's stock-trade example on this machine, end to end.
# Installs only what a local run needs (Debian/Ubuntu packages, when missing), builds `sluice`
# and the two binaries it starts, and runs examples/stocktrade/pipeline.yaml on a Kafka broker
# of its own with generated trades and users. Ctrl-C stops everything; the state stays in
# .sluice/trades for the next run.
#
#   scripts/quickstart.sh               # until Ctrl-C
#   scripts/quickstart.sh --for 2m      # extra arguments go to `sluice run`
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/sluice/target), SLUICE_BUILD_PROFILE (default
# release; `dev` reuses the test suite's build), SLUICE_STATE_DIR (default .sluice/trades).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
profile=${SLUICE_BUILD_PROFILE:-release}

say() { echo "quickstart: $*" >&2; }

# A C/C++ toolchain and headers for librdkafka and RocksDB; Python with venv for the example's
# function; a Java runtime for the Kafka broker that `sluice run` starts.
packages=(build-essential pkg-config cmake libclang-dev libssl-dev python3 python3-venv)
java_major=$(java -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p' || true)
if [[ -z $java_major || $java_major -lt 17 ]]; then packages+=(default-jre-headless); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || { say "install these (or your system's equivalents): ${missing[*]}"; exit 1; }
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { say "Rust is needed: https://rustup.rs"; exit 1; }

say "building sluice ($profile; the first build takes a while)"
cargo build --profile "$profile" --locked -p sluice-cli -p sluice-processor -p sluice-function-runner
dir=$CARGO_TARGET_DIR/$([[ $profile == dev ]] && echo debug || echo "$profile")
say "built; running the stock-trade example (Ctrl-C stops it)"
exec "$dir/sluice" run examples/stocktrade/pipeline.yaml --state-dir "${SLUICE_STATE_DIR:-.sluice/trades}" \
  --datagen users:users --datagen stocktrade:stocktrade --table COMPLETED_PER_MINUTE "$@"
