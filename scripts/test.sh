#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine: installs what the build needs,
# then every workspace test. CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# These 2-vCPU machines behave like one physical core: one thread is 3-4x faster than two.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q && $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "error: Rust is not installed (https://rustup.rs)"; exit 1; }

cargo test --workspace --locked "$@"
