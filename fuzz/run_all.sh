#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600) and prints libFuzzer's final stats;
# the summary goes into docs/reliability.md.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
for t in config dataset safetensors gguf; do
  echo "== $t"
  ./run.sh "$t" "$secs" 2>&1 | grep -E "^(==|stat::|Done|#[0-9]+ *DONE)|SUMMARY|panicked|ERROR|crash-|leak-|timeout-|oom-" | tail -12
done
