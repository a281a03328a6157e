#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (or the ones named) for SECONDS each (default 60),
# on stable Rust: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target keeps its corpus in fuzz/corpus/TARGET/ (inputs that gave a new outcome
# are added) and writes crash-*/hang-* inputs to fuzz/artifacts/TARGET/. Replay one
# with: target/release/reggan-fuzz replay TARGET FILE. Exits non-zero if any target
# crashed or hung. Ends with one SUMMARY line per target (executions, crashes, hangs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -f .deps/env.sh ]] || { echo "run scripts/setup.sh first" >&2; exit 1; }
# shellcheck source=/dev/null
source .deps/env.sh
SECONDS_EACH="${1:-60}"
shift || true
cargo build --release -p reggan-fuzz
FUZZ="${CARGO_TARGET_DIR:-$ROOT/target}/release/reggan-fuzz"
mapfile -t TARGETS < <(if (($#)); then printf '%s\n' "$@"; else "$FUZZ" list; fi)
status=0
summaries=()
for t in "${TARGETS[@]}"; do
  echo "== $t: ${SECONDS_EACH} s"
  log="$(mktemp)"
  # 8 GB of address space: an input that makes the code allocate without bound fails
  # fast (a crash with its input saved) instead of driving the machine into swap.
  (ulimit -v 8388608; "$FUZZ" run "$t" --seconds "$SECONDS_EACH" --dir fuzz) > "$log" || status=1
  grep -E '^(CRASH|HANG|DONE|SUMMARY)' "$log" || true
  summaries+=("$(grep '^SUMMARY' "$log" || echo "SUMMARY target=$t failed")")
  rm -f "$log"
done
printf '%s\n' "${summaries[@]}"
exit "$status"
