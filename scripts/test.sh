#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine, installing what it needs: system
# packages (WebKitGTK, its WebDriver, Xvfb, Chromium), npm packages, tauri-driver. Then: the web
# UI build (with a check that its API types match the server), every workspace test, the desktop
# shell's build and tests, the browser E2E suite (headless Chromium) and the desktop E2E suite
# (Xvfb + tauri-driver). CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

# These 2-vCPU machines behave like one physical core: one thread is 3-4x faster than two.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"
# The engine opens OpenBLAS at run time for the CPU's matrix products (installed below); here its
# absence is an error, so the tests that compare it with the gemm crate always run.
export FINETUNE_REQUIRE_BLAS=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# `cargo install` puts tauri-driver here; not every shell has it on PATH.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
start=$(date +%s)
step() { echo; echo "== $* (+$(( $(date +%s) - start ))s)"; }
# An end-to-end suite that stops making progress fails after this long instead of holding CI
# until its own limit (each suite takes under a minute here).
e2e_limit() {
  local rc=0
  timeout --kill-after=30 900 "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "error: '$*' did not finish within 15 minutes" >&2; fi
  return "$rc"
}

step "system packages"
apt_install build-essential pkg-config curl ca-certificates libopenblas0 \
  libwebkit2gtk-4.1-dev webkit2gtk-driver xvfb xauth chromium python3 python3-venv python3-pip
need_rust
need_node

step "web UI (npm ci, types from ui/openapi.json, vite build)"
build_ui
(cd ui && npm run --silent check:api) || { echo "error: ui/src/api/schema.d.ts is out of date: run 'npm run gen:api' in ui/" >&2; exit 1; }
(cd tests/e2e && { [ -d node_modules ] && [ ! package-lock.json -nt node_modules/.package-lock.json ] || npm ci --no-audit --no-fund; })

step "tauri-driver"
if ! command -v tauri-driver >/dev/null; then
  cargo install tauri-driver --version '^2' --locked
fi

# One feature set for the whole workspace (the desktop shell needs `custom-protocol`): building
# and testing with the same flags compiles every dependency once, and leaves the binaries the
# E2E suites run (target/debug/finetune-studio and finetune-studio-desktop).
features=(--workspace --features finetune-desktop/custom-protocol --locked)
step "cargo build (workspace, all binaries)"
cargo build "${features[@]}"

step "cargo test (workspace, desktop shell included)"
cargo test "${features[@]}" "$@"

step "the engine's reference tests through the GPU paths, on the CPU (FINETUNE_CPU_KERNELS=off)"
# The binaries the step above built, run again (asking cargo for only these targets would resolve
# other features and rebuild half the dependencies).
gpu_path_tests=(parity training family_training qlora seq2seq_training)
cargo test "${features[@]}" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
wanted = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"] \
            and m["target"]["name"] in wanted:
        print(m["executable"])' "${gpu_path_tests[@]}" >target/gpu-path-tests.txt
[ "$(wc -l <target/gpu-path-tests.txt)" -eq "${#gpu_path_tests[@]}" ] \
  || { echo "error: expected the test binaries ${gpu_path_tests[*]}, found: $(cat target/gpu-path-tests.txt)" >&2; exit 1; }
while read -r exe; do FINETUNE_CPU_KERNELS=off "$exe" -q; done <target/gpu-path-tests.txt

step "TensorBoard files read back by the tensorboard package (its own virtualenv)"
scripts/check_tensorboard.sh

step "browser E2E (headless Chromium, real studio and workers)"
(cd tests/e2e && e2e_limit node --test --test-concurrency=1 browser/)

step "desktop E2E (Xvfb + tauri-driver)"
(cd tests/e2e && e2e_limit xvfb-run -a --server-args="-screen 0 1280x800x24" node --test --test-concurrency=1 desktop/)

step "done"
