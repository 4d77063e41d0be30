#!/usr/bin/env bash
# Helm, built from its Go module at a pinned version, for linting, rendering and installing the
# chart in tests.
#
#   helm.sh fetch   build it (no-op when cached); print `export SLUICE_TEST_HELM=<binary>` on stdout
#
# Environment: SLUICE_CACHE (default: $HOME/.cache/sluice).
set -euo pipefail

HELM_VERSION=v4.3.1
CACHE_ROOT="${SLUICE_CACHE:-$HOME/.cache/sluice}"
[[ "$CACHE_ROOT" == /* ]] || CACHE_ROOT="$PWD/$CACHE_ROOT"
BIN="$CACHE_ROOT/helm/helm-$HELM_VERSION"

case "${1:-}" in
  fetch)
    if [[ ! -x "$BIN" ]]; then
      echo "helm.sh: building helm $HELM_VERSION from the Go module proxy" >&2
      mkdir -p "$CACHE_ROOT/helm"
      gobin=$(mktemp -d)
      GOBIN="$gobin" GOFLAGS=-trimpath go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
      mv "$gobin/helm" "$BIN"
      rm -rf "$gobin"
    fi
    "$BIN" version --short >&2
    echo "export SLUICE_TEST_HELM=$BIN"
    ;;
  *)
    echo "usage: helm.sh fetch" >&2
    exit 2
    ;;
esac
