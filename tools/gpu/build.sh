#!/usr/bin/env bash
# Builds what tools/gpu/check.sh runs on a lent GPU machine, here, without a GPU: finetune-studio
# and the engine's reference-test binaries with `--features cuda`, stripped and packed into one
# solid archive DEST/bins.tar.xz (DEST defaults to .gpu/, which .git/info/exclude should ignore;
# it travels with `carry`). The binaries share most of their bytes (candle, its PTX), so one
# xz stream over all of them is 15 MB where six separate ones were 49 MB: what travels with a
# call is limited to 64 MiB, the working tree included.
#
#   tools/gpu/build.sh [DEST=.gpu]
#
# Needs the CUDA 13 toolchain that ../shared/scripts/build-cuda.sh installs from PyPI wheels
# (ROOT=/tmp/cuda-build) and a checkout at /work/main (the test binaries find the fixtures through
# the path they were built at). CUDA_COMPUTE_CAP defaults to 90 (H100/H200). A cold build takes
# ~25 min on 2 cores (candle's kernels go through nvcc).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=$(mkdir -p "${1:-.gpu}" && cd "${1:-.gpu}" && pwd)
ROOT=${ROOT:-/tmp/cuda-build}
C=$ROOT/cuda-wheels/nvidia/cu13
[ -x "$C/bin/nvcc" ] || { echo "no nvcc under $C: run ../shared/scripts/build-cuda.sh once" >&2; exit 2; }
export CUDA_HOME=$ROOT/cuda-home PATH=$C/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
TESTS="parity qlora training family_training seq2seq_training"
cargo build --release --locked -p finetune-cli --features cuda
args=(); for t in $TESTS; do args+=(--test "$t"); done
cargo test --release --locked -p finetune-engine --features cuda --no-run "${args[@]}" --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' >"$DEST/tests.txt"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
strip -o "$STAGE/finetune-studio" "$CARGO_TARGET_DIR/release/finetune-studio"
while read -r name exe; do strip -o "$STAGE/test-$name" "$exe"; done <"$DEST/tests.txt"
tar cf - -C "$STAGE" . | xz -T1 -9e --lzma2=dict=256MiB >"$DEST/bins.tar.xz"
ls -l "$STAGE" "$DEST"
