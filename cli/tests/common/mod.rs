//! Helpers the `reggan` binary's test files share: running the binary, a scratch
//! directory per test, and running a GStreamer pipeline to its end.

#![allow(dead_code)] // each test binary uses a part of it

use std::path::PathBuf;
use std::process::{Command, Output};

use gst::prelude::*;

/// Runs the `reggan` binary built for these tests with `args`.
pub fn reggan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reggan"))
        .args(args)
        .output()
        .expect("the reggan binary runs")
}

/// A fresh, empty directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reggan-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Plays `pipeline` until end of stream (at most two minutes) and stops it; panics on
/// an error message.
pub fn run_pipeline(pipeline: &gst::Element) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("pipeline finishes in time");
    pipeline.set_state(gst::State::Null).unwrap();
    if let gst::MessageView::Error(err) = msg.view() {
        panic!("pipeline error: {} ({:?})", err.error(), err.debug());
    }
}
