#!/usr/bin/env bash
# Runs one fuzz target for a number of seconds, starting from the committed seeds.
#   fuzz/run.sh config|dataset|safetensors|gguf [SECONDS=600] [EXTRA LIBFUZZER FLAGS...]
# e.g. `fuzz/run.sh gguf 600 -fork=1 -ignore_crashes=1` keeps going past a known finding and
# saves every crash under artifacts/<target>/ (libFuzzer otherwise stops at the first one).
# cargo-fuzz needs a nightly-capable compiler; RUSTC_BOOTSTRAP=1 lets the stable one act as one.
set -euo pipefail
cd "$(dirname "$0")"
target=$1
secs=${2:-600}
shift
[ $# -gt 0 ] && shift
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p "corpus/$target"
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 -print_final_stats=1 "$@"
