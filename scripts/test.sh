#!/usr/bin/env bash
# The project's test command: every test of every crate, plus formatting and lints.
# Run scripts/setup.sh once before (CI does; it is idempotent and quick when done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -f .deps/env.sh ]] || { echo "run scripts/setup.sh first" >&2; exit 1; }
# shellcheck source=/dev/null
source .deps/env.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Build first: the gst-launch test loads target/release/libgstreggan.so, which
# `cargo test` alone does not rebuild.
cargo build --release --workspace --all-targets
cargo test --release --workspace
