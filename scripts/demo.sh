#!/usr/bin/env bash
# The newcomer's one command: set up (idempotent), build, and run the demo.
# Writes out/demo.mp4 (the astronaut photo with a moving camera, cycling through every
# expression) and out/demo.png (input and the six expressions side by side).
#
# Usage: scripts/demo.sh [extra `reggan demo` options, e.g. --model DIR]
# Works from any directory; outputs go to <repo>/out/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '\033[1;34m[demo]\033[0m %s\n' "$*" >&2; }

"$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
source "$ROOT/.deps/env.sh"

# setup.sh builds the whole workspace; make sure the CLI is there even after --no-build.
[[ -x "$ROOT/target/release/reggan" ]] || (cd "$ROOT" && cargo build --release -p reggan-cli)

OUT="$ROOT/out"
say "running: reggan demo --out $OUT $*"
"$ROOT/target/release/reggan" demo --out "$OUT" "$@"
say "video: $OUT/demo.mp4"
say "still: $OUT/demo.png"
