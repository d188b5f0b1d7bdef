#!/usr/bin/env bash
# Starts Finetune Studio: builds the release binary and serves the studio on 127.0.0.1, printing
# its URL. (The bundled demo model, the web UI build and the desktop window are added by the UI
# work; until then this serves the HTTP API.)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: Rust is not installed (https://rustup.rs)"; exit 1; }
cargo build --release --locked -p finetune-cli
exec target/release/finetune-studio serve --host 127.0.0.1 --port "${PORT:-0}" --data-dir "${FINETUNE_STUDIO_HOME:-$HOME/.local/share/finetune-studio}"
