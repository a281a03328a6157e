// SPDX-License-Identifier: MIT OR Apache-2.0
//! 100 PLAYING -> NULL cycles of `appsrc ! faceexpression ! appsink`, one frame with a
//! face each time: every start loads the model and the detector and every stop drops
//! them, so a leaked session, thread pool or file shows up as growth in the process's
//! threads, open files or resident memory.
//!
//! Its own test binary: the counts are of the whole process, and another test running
//! beside it would move them.

mod common;

use common::*;
use gst::prelude::*;

const CYCLES: usize = 100;
/// Warm-up cycles before the baseline: first loads allocate process-wide things once
/// (ONNX Runtime's environment, OpenCV's and GStreamer's caches, allocator arenas).
const WARM_UP: usize = 5;

#[derive(Debug, Clone, Copy)]
struct Usage {
    threads: i64,
    fds: i64,
    rss_kb: i64,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/self/status"))
    };
    Usage {
        threads: field("Threads:"),
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count() as i64,
        rss_kb: field("VmRSS:"),
    }
}

#[test]
fn hundred_playing_null_cycles_leak_nothing() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(&info.to_caps().unwrap())
        .format(gst::Format::Time)
        .build();
    let filter = gst::ElementFactory::make("faceexpression")
        .property("model", model.to_str().unwrap())
        .build()
        .unwrap();
    let sink = gst_app::AppSink::builder().sync(false).build();
    pipeline
        .add_many([src.upcast_ref(), &filter, sink.upcast_ref()])
        .unwrap();
    gst::Element::link_many([src.upcast_ref(), &filter, sink.upcast_ref()]).unwrap();

    let reference = core_reference(&model, &img, "happy");
    let cycle = |i: usize| {
        pipeline.set_state(gst::State::Playing).unwrap();
        src.push_buffer(buffer.copy()).unwrap();
        let sample = sink
            .try_pull_sample(gst::ClockTime::from_seconds(60))
            .unwrap_or_else(|| panic!("cycle {i}: no frame came out"));
        let out = to_rgb(sample.buffer().unwrap(), &info);
        let off = count_differences(&out, &reference, 1);
        assert_eq!(
            off, 0,
            "cycle {i}: {off} pixels differ from the core's result"
        );
        pipeline.set_state(gst::State::Null).unwrap();
    };
    for i in 0..WARM_UP {
        cycle(i);
    }
    let before = usage();
    let mut curve = Vec::new();
    for i in 0..CYCLES {
        cycle(WARM_UP + i);
        if (i + 1) % 25 == 0 {
            curve.push((i + 1, usage().rss_kb));
        }
    }
    let after = usage();
    eprintln!("before {before:?}, after {after:?}, RSS (cycle, kB): {curve:?}");
    // A leaked ONNX Runtime session holds the 6 MB model at least: 100 of them would be
    // 600 MB. A leaked intra-op thread pool or detector file shows one per cycle.
    assert!(
        after.threads - before.threads <= 2,
        "threads {} -> {}",
        before.threads,
        after.threads
    );
    assert!(
        after.fds - before.fds <= 2,
        "open files {} -> {}",
        before.fds,
        after.fds
    );
    assert!(
        after.rss_kb - before.rss_kb <= 40 * 1024,
        "RSS grew {} kB over {CYCLES} cycles",
        after.rss_kb - before.rss_kb
    );
}
