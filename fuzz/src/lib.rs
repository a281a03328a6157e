// SPDX-License-Identifier: MIT OR Apache-2.0
//! Fuzz targets of the reggan core. Each target takes arbitrary bytes, turns them into
//! one input of a loader or of the pixel pipeline, and must return (an `Err` is a fine
//! answer to bad input) without panicking, aborting or hanging, and with the invariants
//! it checks holding. The return value is a short label of what happened (used by the
//! driver as a cheap stand-in for coverage: an input with a new label joins the corpus).
//!
//! The targets are plain `fn(&[u8]) -> String`, the shape cargo-fuzz and libFuzzer take,
//! so they can be wrapped in `fuzz_target!` on a nightly toolchain; `src/main.rs` runs
//! them on stable Rust (see `scripts/fuzz.sh`).

pub mod input;
pub mod onnx;
pub mod targets;

pub use targets::{run, TARGETS};
