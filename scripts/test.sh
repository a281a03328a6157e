#!/usr/bin/env bash
# The project's test command: the full set-up (idempotent; quick when done, and a machine
# that only ran the demo's runtime set-up gets the trainer's PyTorch and the evaluation
# models here), then every test of every crate, plus formatting and lints.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --no-build
# shellcheck source=/dev/null
source .deps/env.sh
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
# Build first: the gst-launch test loads target/release/libgstreggan.so, which
# `cargo test` alone does not rebuild.
cargo build --release --workspace --all-targets
cargo test --release --workspace
