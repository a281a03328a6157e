#!/usr/bin/env bash
# The newcomer's one command: set up what the demo needs (idempotent), build the CLI and
# the plugin, and run the demo. Only the run-time set-up (scripts/setup.sh --runtime:
# Debian packages, ONNX Runtime, BlazeFace; no PyTorch, no trainer build).
# Writes out/demo.mp4 (the neutral demo face with a moving camera, cycling through every
# expression) and out/demo.png (input and the six expressions side by side).
#
# Usage: scripts/demo.sh [extra `reggan demo` options, e.g. --model DIR]
# Works from any directory; outputs go to <repo>/out/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '\033[1;34m[demo]\033[0m %s\n' "$*" >&2; }

"$ROOT/scripts/setup.sh" --runtime
# shellcheck source=/dev/null
source "$ROOT/.deps/env.sh"

OUT="$ROOT/out"
say "running: reggan demo --out $OUT $*"
"$ROOT/target/release/reggan" demo --out "$OUT" "$@"
say "video: $OUT/demo.mp4"
say "still: $OUT/demo.png"
