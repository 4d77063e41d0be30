#!/usr/bin/env bash
# The README's first command, as a new user runs it, checked: `scripts/quickstart.sh` with a clean
# HOME (no cached jars, no Python environment, no state), with the test build's binaries
# (SLUICE_BUILD_PROFILE=dev, the suite's CARGO_TARGET_DIR) and without a terminal, for a bounded
# time. It must show per-minute settlement counts; the time from the build's end to the first
# counts on screen is printed (it includes fetching Kafka's jars and making the Python
# environment, which a second run does not repeat).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
home=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$home" "$out"' EXIT
# The toolchains stay where they are; everything of Sluice's starts from nothing. The Python is
# the system's (not a per-user one under HOME).
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
PATH=$(tr ':' '\n' <<<"$PATH" | grep -v '/\.pyenv/' | paste -sd: -)
export PATH
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HOME=$home SLUICE_BUILD_PROFILE=dev SLUICE_STATE_DIR=$home/state SLUICE_CACHE=$home/.cache/sluice \
  timeout 600 scripts/quickstart.sh --for 60s --plain --listen "127.0.0.1:$port" 2>&1 |
  while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$out" || {
  cut -d' ' -f2- "$out" | tail -n 60 >&2
  echo "quickstart-check: scripts/quickstart.sh failed" >&2
  exit 1
}
built=$(awk '/quickstart: built/ {print $1; exit}' "$out")
counts=$(awk '/^[0-9.]+ \| Z/ {print $1; exit}' "$out")
grep -E 'newest first|^[0-9.]+ [+|]' "$out" | cut -d' ' -f2- | tail -n 14 >&2
if [[ -z $counts ]]; then
  cut -d' ' -f2- "$out" | tail -n 60 >&2
  echo "quickstart-check: no per-minute counts on screen within the run" >&2
  exit 1
fi
awk -v a="$built" -v b="$counts" 'BEGIN { printf "quickstart-check: per-minute counts on screen %.1f s after the build finished (first run: jars and Python environment included)\n", b - a }' >&2
