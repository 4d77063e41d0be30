#!/usr/bin/env bash
# README quickstart: install what is missing, build the `sluice` command, and check the
# stock-trade example Pipeline with it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}

tests/infra/deps.sh
cargo build --release --locked -p sluice-cli
"$CARGO_TARGET_DIR/release/sluice" validate examples/stocktrade/pipeline.yaml
