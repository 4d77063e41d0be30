#!/usr/bin/env bash
# Build every Sluice image without a daemon or a registry: one archive per image in OUTDIR (an
# OCI image layout that is also a `docker save` archive), tagged with the chart's appVersion.
#
#   images/build.sh [--binaries DIR] [--repository PREFIX] OUTDIR
#
# Prints one line per image on stdout: `NAME REFERENCE`, e.g.
#   sluice ghcr.io/sluice-dev/sluice:0.1.0
#   settle ghcr.io/sluice-dev/sluice-example-settle:0.1.0
# Load them with `docker load -i`, `podman load -i`, `ctr -n k8s.io images import`, or
# `tests/infra/cluster.sh load`; push them with `skopeo copy oci-archive:OUTDIR/sluice.tar ...`.
#
#   --binaries DIR      take sluice-operator, sluice-processor and sluice-function-runner from DIR
#                       (the test suite passes its debug build; debug info is stripped) instead of
#                       `cargo build --release`
#   --repository PREFIX image names under PREFIX (default ghcr.io/sluice-dev, the chart's)
#
# The same contents as images/sluice.Dockerfile and images/settle.Dockerfile: Debian bookworm
# with the packages of images/*.packages (made by mmdebstrap, cached under
# ~/.cache/sluice/images), the binaries in /usr/local/bin, user 65532.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${SLUICE_CACHE:-$HOME/.cache/sluice}/images
binaries=""
repository=ghcr.io/sluice-dev
out=""
while (($#)); do
  case $1 in
    --binaries) binaries=$2; shift 2 ;;
    --repository) repository=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[[ -n $out ]] || { echo "usage: images/build.sh [--binaries DIR] [--repository PREFIX] OUTDIR" >&2; exit 2; }
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)

log() { echo "build.sh: $*" >&2; }
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$root/charts/sluice/Chart.yaml")
[[ -n $version ]] || { log "no appVersion in charts/sluice/Chart.yaml"; exit 1; }
command -v mmdebstrap >/dev/null || { log "mmdebstrap is required (apt-get install mmdebstrap; tests/infra/deps.sh installs it)"; exit 1; }

# base PACKAGES_FILE: a Debian bookworm root filesystem (tar) with those packages and the
# non-root user 65532, cached by the file's content and this recipe.
base() {
  local list=$1 packages key tar
  packages=$(grep -v '^#' "$list" | grep -v '^ *$' | paste -sd, -)
  key=$( { cat "$list"; sed -n '/^base()/,/^}/p' "$0"; } | sha256sum | cut -c1-16)
  tar=$cache/bookworm-$(basename "$list" .packages)-$key.tar
  if [[ ! -s $tar ]]; then
    log "making a Debian bookworm root filesystem with $packages (mmdebstrap, about a minute)"
    local started=$SECONDS
    nice -n 10 mmdebstrap --quiet --variant=minbase --include="$packages" \
      --aptopt='Acquire::Languages "none"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin" >>"$1/etc/passwd"' \
      --customize-hook='echo "nonroot:x:65532:" >>"$1/etc/group"' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*' \
      bookworm "$tar.tmp" >&2
    mv "$tar.tmp" "$tar"
    log "made $(basename "$tar") in $((SECONDS - started))s"
  fi
  echo "$tar"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- sluice: the operator and the data plane ------------------------------------------------
if [[ -z $binaries ]]; then
  log "building the release binaries"
  (cd "$root" && cargo build --release --locked -p sluice-operator -p sluice-processor -p sluice-function-runner >&2)
  binaries=${CARGO_TARGET_DIR:-$root/target}/release
  strip=()
else
  strip=(--strip-debug)
fi
layer=$work/sluice
mkdir -p "$layer/usr/local/bin" "$layer/var/lib/sluice" "$layer/home/nonroot"
for b in sluice-operator sluice-processor sluice-function-runner; do
  [[ -x $binaries/$b ]] || { log "$binaries/$b is missing"; exit 1; }
  if ((${#strip[@]})); then objcopy "${strip[@]}" "$binaries/$b" "$layer/usr/local/bin/$b"; else cp "$binaries/$b" "$layer/usr/local/bin/"; fi
done
printf '%s 65532 65532\n' var/lib/sluice home/nonroot >"$layer/.owners"
ref=$repository/sluice:$version
python3 "$here/oci.py" "$out/sluice.tar" --name "$ref" --layer "$(base "$here/sluice.packages")" --layer "$layer" \
  --user 65532:65532 --workdir /home/nonroot --cmd '["sluice-operator", "--help"]' \
  --label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.source=https://github.com/sluice-dev/sluice" >&2
echo "sluice $ref"

# ---- settle: the example's Lambda function ---------------------------------------------------
layer=$work/settle
site=$layer/usr/local/lib/python3.11/dist-packages
wheels=$cache/settle-wheels-$(sha256sum "$root/examples/stocktrade/requirements.txt" | cut -c1-16)
if [[ ! -f $wheels/.complete ]]; then
  log "installing the settle function's Python requirements (wheels for CPython 3.11)"
  rm -rf "$wheels"
  python3 -m pip install --quiet --disable-pip-version-check --no-input --only-binary :all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --target "$wheels" -r "$root/examples/stocktrade/requirements.txt" >&2
  touch "$wheels/.complete"
fi
mkdir -p "$site" "$layer/var/task"
cp -a "$wheels/." "$site/" && rm -f "$site/.complete"
rm -rf "$site/bin"
cp "$here/lambda-entrypoint.sh" "$layer/lambda-entrypoint.sh"
cp "$root/examples/stocktrade/settle.py" "$layer/var/task/settle.py"
ref=$repository/sluice-example-settle:$version
python3 "$here/oci.py" "$out/settle.tar" --name "$ref" --layer "$(base "$here/settle.packages")" --layer "$layer" \
  --user 65532:65532 --workdir /var/task --env LAMBDA_TASK_ROOT=/var/task \
  --entrypoint '["/lambda-entrypoint.sh"]' --cmd '["settle.handler"]' \
  --label "org.opencontainers.image.version=$version" >&2
echo "settle $ref"
