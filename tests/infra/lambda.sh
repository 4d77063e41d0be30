#!/usr/bin/env bash
# The real AWS Lambda runtime interface client for Python (`awslambdaric` from PyPI, pinned),
# installed into a cache directory for the function runner's tests.
#
#   lambda.sh fetch   install it (no-op when cached); print the export line on stdout
#
# stdout carries only `export SLUICE_TEST_AWSLAMBDARIC=<dir>`: a directory to put on PYTHONPATH
# (`PYTHONPATH=<dir> python3 -m awslambdaric module.handler`). Progress goes to stderr.
#
# Environment:
#   SLUICE_CACHE   cache root (default: $HOME/.cache/sluice)
#   PYTHON         the interpreter (default: python3); the wheel matches its version
set -euo pipefail

# The pins are the settle function's (examples/stocktrade/requirements.txt, also in its image and
# in `sluice run`'s environment): what the tests run is what the example runs with.
REQUIREMENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/examples/stocktrade/requirements.txt"
AWSLAMBDARIC_VERSION=$(sed -n 's/^awslambdaric==//p' "$REQUIREMENTS")
CACHE_ROOT="${SLUICE_CACHE:-$HOME/.cache/sluice}"
[[ "$CACHE_ROOT" == /* ]] || CACHE_ROOT="$PWD/$CACHE_ROOT"
PYTHON="${PYTHON:-python3}"
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
TARGET="$CACHE_ROOT/awslambdaric-$AWSLAMBDARIC_VERSION-py$py_version-$(sha256sum "$REQUIREMENTS" | cut -c1-12)"

case "${1:-}" in
  fetch)
    if [[ ! -f "$TARGET/.complete" ]]; then
      echo "lambda.sh: installing awslambdaric $AWSLAMBDARIC_VERSION into $TARGET" >&2
      rm -rf "$TARGET"
      # Wheels only: the source build needs autotools and compiles curl.
      "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input --only-binary :all: \
        --target "$TARGET" -r "$REQUIREMENTS" >&2
      PYTHONPATH="$TARGET" "$PYTHON" -c 'import awslambdaric.bootstrap' >&2
      touch "$TARGET/.complete"
    fi
    echo "export SLUICE_TEST_AWSLAMBDARIC=$TARGET"
    ;;
  *)
    echo "usage: lambda.sh fetch" >&2
    exit 2
    ;;
esac
