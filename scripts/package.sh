#!/usr/bin/env bash
# Builds the desktop app's Debian package (release): target/release/bundle/deb/*.deb, holding the
# desktop app and the `finetune-studio` binary it runs workers with. (AppImage bundling needs
# downloads from outside the package registries and is not offered.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh
apt_install build-essential pkg-config libwebkit2gtk-4.1-dev
need_rust
need_node
build_ui
cargo build --release --locked -p finetune-cli
ui/node_modules/.bin/tauri build --bundles deb -- --locked
ls -l target/release/bundle/deb/*.deb
