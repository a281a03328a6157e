// SPDX-License-Identifier: MIT OR Apache-2.0
//! `faceexpression` under the stream events a real application sends: a flushing seek,
//! a caps change mid-stream (size and format), EOS followed by a new stream or a
//! restart, and property changes from another thread while frames flow.
//!
//! The element tracks faces between full-frame searches (`detect-interval`): in between
//! it only looks around where each face was. State from before a seek, a new stream or
//! a new frame size would look in the wrong place, so each test moves the face and
//! checks that the first frame after the event is exactly what a fresh core
//! `FrameProcessor` makes of it.
//!
//! Tests print "SKIPPED: ..." and return when the shipped model or the photo is absent.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use gst::prelude::*;
use reggan::RgbImage;

/// A full-frame search only on the first frame of a stream: every later frame depends on
/// the tracked faces, so stale tracking shows.
const RARE_SEARCH: u32 = 300;

/// A grey `width` x `height` frame with the astronaut photo pasted at (`dx`, `dy`)
/// (clipped at the frame's edges).
fn canvas(img: &RgbImage, width: usize, height: usize, dx: usize, dy: usize) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    out.data.fill(128);
    for y in 0..img.height.min(height.saturating_sub(dy)) {
        let n = img.width.min(width.saturating_sub(dx));
        let src = &img.data[y * img.width * 3..(y * img.width + n) * 3];
        let at = ((y + dy) * width + dx) * 3;
        out.data[at..at + n * 3].copy_from_slice(src);
    }
    out
}

/// The same 640x480 scene with the face where the photo puts it (around x 170-230) and
/// moved 128 px to the right: far enough that a search around one misses the other.
fn two_scenes(img: &RgbImage) -> (RgbImage, RgbImage) {
    (canvas(img, 640, 480, 0, 0), canvas(img, 640, 480, 128, 0))
}

fn flush(h: &mut gst_check::Harness) {
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
}

/// Pushes `img` in `format` and checks the element's result is exactly the core's on
/// a fresh processor (first frame: full search), with one face ROI. Returns the ROI.
fn assert_fresh(
    h: &mut gst_check::Harness,
    model: &std::path::Path,
    img: &RgbImage,
    format: gst_video::VideoFormat,
    what: &str,
) -> (u32, u32, u32, u32) {
    let (buffer, info) = to_buffer(img, format);
    let (_, out) = run_one(h, buffer);
    let rois = face_rois(&out);
    assert_eq!(rois.len(), 1, "{what}: expected one face, got {rois:?}");
    let off = count_differences(
        &to_rgb(&out, &info),
        &core_reference(model, img, "happy"),
        1,
    );
    assert_eq!(
        off, 0,
        "{what}: {off} pixels differ from a fresh processor's result (stale tracking?)"
    );
    rois[0]
}

/// Whether two ROIs cover mostly the same pixels (a tracked face's box moves a pixel or
/// two from the full search's).
fn same_face(a: (u32, u32, u32, u32), b: (u32, u32, u32, u32)) -> bool {
    let x0 = a.0.max(b.0);
    let y0 = a.1.max(b.1);
    let x1 = (a.0 + a.2).min(b.0 + b.2);
    let y1 = (a.1 + a.3).min(b.1 + b.3);
    let inter = x1.saturating_sub(x0) as f32 * y1.saturating_sub(y0) as f32;
    inter / ((a.2 * a.3 + b.2 * b.3) as f32 - inter) > 0.7
}

/// The single face ROI of a frame.
fn one_face(out: &gst::Buffer, what: &str) -> (u32, u32, u32, u32) {
    let rois = face_rois(out);
    assert_eq!(rois.len(), 1, "{what}: expected one face, got {rois:?}");
    rois[0]
}

/// An RGB harness at `first`'s size that searches the whole frame only on the first
/// frame of a stream.
fn rare_search_harness(model: &std::path::Path, first: &RgbImage) -> gst_check::Harness {
    let (_, info) = to_buffer(first, gst_video::VideoFormat::Rgb);
    harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("detect-interval", &RARE_SEARCH),
        ],
        &info,
    )
}

fn push_rgb(h: &mut gst_check::Harness, img: &RgbImage) -> gst::Buffer {
    run_one(h, to_buffer(img, gst_video::VideoFormat::Rgb).0).1
}

#[test]
fn flushing_seek_forgets_the_tracked_faces() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (here, there) = two_scenes(&img);
    let mut h = rare_search_harness(&model, &here);
    let first = assert_fresh(&mut h, &model, &here, gst_video::VideoFormat::Rgb, "start");
    let tracked = one_face(&push_rgb(&mut h, &here), "tracked");
    assert!(same_face(tracked, first), "{tracked:?} vs {first:?}");
    // The premise: without a seek, the face that moved is lost where it was, and a lost
    // face is held there for a few frames (then fades out).
    let rois = face_rois(&push_rgb(&mut h, &there));
    assert!(
        rois.iter().any(|r| same_face(*r, first)),
        "no face held where it was ({rois:?}); the test cannot see stale tracking"
    );
    // A flushing seek to a frame where the face is elsewhere: a full search at once.
    flush(&mut h);
    let moved = assert_fresh(
        &mut h,
        &model,
        &there,
        gst_video::VideoFormat::Rgb,
        "after flush",
    );
    assert!(
        moved.0 >= first.0 + 100,
        "ROI {moved:?} after the seek is not the moved face (before {first:?})"
    );
}

#[test]
fn caps_change_from_640x480_rgb_to_1280x720_bgrx_mid_stream() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (small, _) = two_scenes(&img);
    // In the larger frame the face sits 600 px right of and 200 px below where it was.
    let large = canvas(&img, 1280, 720, 600, 200);
    let rgb = gst_video::VideoFormat::Rgb;
    let bgrx = gst_video::VideoFormat::Bgrx;
    let (_, small_info) = to_buffer(&small, rgb);
    let (_, large_info) = to_buffer(&large, bgrx);
    let mut h = harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("detect-interval", &RARE_SEARCH),
        ],
        &small_info,
    );
    let small_roi = assert_fresh(&mut h, &model, &small, rgb, "640x480 RGB");
    let tracked = one_face(&push_rgb(&mut h, &small), "tracked");
    assert!(
        same_face(tracked, small_roi),
        "{tracked:?} vs {small_roi:?}"
    );

    h.set_src_caps(large_info.to_caps().unwrap());
    let large_roi = assert_fresh(&mut h, &model, &large, bgrx, "after caps 1280x720 BGRx");
    assert!(
        large_roi.0 >= 600 && large_roi.1 >= 200,
        "ROI {large_roi:?} is not where the 1280x720 frame has the face"
    );
    // The tracked face carries on in the new size...
    let (buffer, _) = to_buffer(&large, bgrx);
    let tracked = one_face(&run_one(&mut h, buffer).1, "tracked in 1280x720");
    assert!(
        same_face(tracked, large_roi),
        "{tracked:?} vs {large_roi:?}"
    );
    // ...and back to the first caps, the face is found where it is there.
    h.set_src_caps(small_info.to_caps().unwrap());
    assert_eq!(
        assert_fresh(&mut h, &model, &small, rgb, "back to 640x480 RGB"),
        small_roi
    );
}

#[test]
fn caps_change_from_640x480_i420_to_1280x720_nv12_mid_stream() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    use gst_video::VideoFormat::{Nv12, I420};
    let (small, _) = two_scenes(&img);
    let large = canvas(&img, 1280, 720, 600, 200);
    let (small_frame, small_info) = to_yuv_buffer(&small, I420, false);
    let mut h = harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("detect-interval", &RARE_SEARCH),
        ],
        &small_info,
    );
    let small_roi = one_face(&run_one(&mut h, small_frame).1, "640x480 I420");
    // The same face as in RGB (a box within a pixel or two: the 4:2:0 chroma).
    let (rgb_frame, rgb_info) = to_buffer(&small, gst_video::VideoFormat::Rgb);
    let mut rgb = harness(&[("model", &model.to_str().unwrap())], &rgb_info);
    let rgb_roi = one_face(&run_one(&mut rgb, rgb_frame).1, "640x480 RGB");
    assert!(
        same_face(small_roi, rgb_roi),
        "{small_roi:?} vs {rgb_roi:?}"
    );

    // A new size and layout: the bridge's buffers follow and tracking starts afresh.
    let (large_frame, large_info) = to_yuv_buffer(&large, Nv12, false);
    h.set_src_caps(large_info.to_caps().unwrap());
    let (before, out) = run_one(&mut h, large_frame);
    let large_roi = one_face(&out, "after caps 1280x720 NV12");
    assert!(
        large_roi.0 >= 600 && large_roi.1 >= 200,
        "ROI {large_roi:?} is not where the 1280x720 frame has the face"
    );
    assert_ne!(
        before,
        bytes(&out),
        "the 1280x720 NV12 face was not changed"
    );
    let tracked = one_face(
        &run_one(&mut h, to_yuv_buffer(&large, Nv12, false).0).1,
        "tracked in 1280x720 NV12",
    );
    assert!(
        same_face(tracked, large_roi),
        "{tracked:?} vs {large_roi:?}"
    );
}

#[test]
fn a_format_change_of_the_same_size_keeps_tracking() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (here, there) = two_scenes(&img);
    let mut h = rare_search_harness(&model, &here);
    let first = assert_fresh(&mut h, &model, &here, gst_video::VideoFormat::Rgb, "start");
    // RGB -> BGRx at 640x480: face coordinates stay valid, so the tracked face is kept:
    // when it moves away it is held where it was, as without a caps change (after a
    // reset only the moved face would be there).
    let (buffer, bgrx_info) = to_buffer(&there, gst_video::VideoFormat::Bgrx);
    h.set_src_caps(bgrx_info.to_caps().unwrap());
    let rois = face_rois(&run_one(&mut h, buffer).1);
    assert!(
        rois.iter().any(|r| same_face(*r, first)),
        "the tracked face was forgotten at a format change: {rois:?}"
    );
}

#[test]
fn eos_then_a_new_stream_starts_afresh() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (here, there) = two_scenes(&img);
    let mut h = rare_search_harness(&model, &here);
    assert_fresh(
        &mut h,
        &model,
        &here,
        gst_video::VideoFormat::Rgb,
        "stream 1",
    );
    push_rgb(&mut h, &here);
    assert!(h.push_event(gst::event::Eos::new()));
    // Data after EOS is refused until a new stream starts.
    let (buffer, info) = to_buffer(&here, gst_video::VideoFormat::Rgb);
    assert_eq!(h.push(buffer), Err(gst::FlowError::Eos));
    assert!(h.push_event(gst::event::StreamStart::new("second")));
    h.set_src_caps(info.to_caps().unwrap());
    assert_fresh(
        &mut h,
        &model,
        &there,
        gst_video::VideoFormat::Rgb,
        "stream 2",
    );
}

/// appsrc ! faceexpression ! appsink, with `frames` pushed and pulled.
struct AppPipeline {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
}

impl AppPipeline {
    fn new(model: &std::path::Path, info: &gst_video::VideoInfo) -> Self {
        init();
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(&info.to_caps().unwrap())
            .format(gst::Format::Time)
            .build();
        let filter = gst::ElementFactory::make("faceexpression")
            .property("model", model.to_str().unwrap())
            .property("detect-interval", RARE_SEARCH)
            .build()
            .unwrap();
        let sink = gst_app::AppSink::builder().sync(false).build();
        pipeline
            .add_many([src.upcast_ref(), &filter, sink.upcast_ref()])
            .unwrap();
        gst::Element::link_many([src.upcast_ref(), &filter, sink.upcast_ref()]).unwrap();
        AppPipeline {
            pipeline,
            src,
            sink,
        }
    }

    /// Plays `frames` through to EOS and returns the output buffers.
    fn run(&self, frames: &[&RgbImage], format: gst_video::VideoFormat) -> Vec<gst::Buffer> {
        self.pipeline.set_state(gst::State::Playing).unwrap();
        for img in frames {
            self.src.push_buffer(to_buffer(img, format).0).unwrap();
        }
        self.src.end_of_stream().unwrap();
        let timeout = gst::ClockTime::from_seconds(60);
        let out: Vec<gst::Buffer> = (0..frames.len())
            .map(|i| {
                let sample = self
                    .sink
                    .try_pull_sample(timeout)
                    .unwrap_or_else(|| panic!("frame {i} did not come out"));
                sample.buffer_owned().unwrap()
            })
            .collect();
        let bus = self.pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error])
            .expect("EOS reaches the bus");
        assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
        out
    }
}

impl Drop for AppPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[test]
fn a_pipeline_restarted_after_eos_gives_the_same_frames() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let (here, there) = two_scenes(&img);
    let format = gst_video::VideoFormat::Rgb;
    let (_, info) = to_buffer(&here, format);
    let p = AppPipeline::new(&model, &info);
    // Run 1 ends tracking the face on the left; run 2 starts with it on the right.
    let first = p.run(&[&here, &here], format);
    // Through NULL: appsink keeps its EOS over a PAUSED -> READY -> PAUSED cycle (it
    // starts and stops in NULL <-> READY), so READY would test appsink, not the element.
    for round in 0..2 {
        p.pipeline.set_state(gst::State::Null).unwrap();
        let second = p.run(&[&there, &there], format);
        assert_eq!(
            count_differences(
                &to_rgb(&second[0], &info),
                &core_reference(&model, &there, "happy"),
                1
            ),
            0,
            "restart {round}: the first frame is not a fresh processor's"
        );
        one_face(&second[1], "second frame after the restart");
        p.pipeline.set_state(gst::State::Null).unwrap();
        let again = p.run(&[&here, &here], format);
        assert!(
            again.iter().zip(&first).all(|(a, b)| bytes(a) == bytes(b)),
            "restart {round}: the same frames came out different"
        );
    }
}

/// `expression`, `intensity` and `model` changed from another thread as fast as it can
/// while frames flow: every frame comes out, and each is exactly the core's result for
/// the expression and intensity its ROI meta reports (no frame mixes two settings).
#[test]
fn properties_set_from_another_thread_while_frames_flow() {
    let (Some(model), Some(img)) = (shipped_model(), astronaut()) else {
        return;
    };
    let copy = std::env::temp_dir().join(format!("faceexpression-threads-{}", std::process::id()));
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["model.json", "model.onnx"] {
        std::fs::copy(model.join(f), copy.join(f)).unwrap();
    }
    let (buffer, info) = to_buffer(&img, gst_video::VideoFormat::Rgb);
    let expressions = ["happy", "sad"];
    let intensities = [0.0, 0.5, 1.0];
    let mut references = Vec::new();
    for e in expressions {
        for i in intensities {
            let config = reggan::ProcessorConfig {
                expression: e.into(),
                intensity: i as f32,
                ..Default::default()
            };
            let mut p = reggan::FrameProcessor::new(&model, config).unwrap();
            let mut out = img.clone();
            p.process(&mut out.as_frame()).unwrap();
            references.push(((e, i), out));
        }
    }
    // A full search every frame, no tracking and no transitions, so each frame is
    // independent of the one before.
    let mut h = harness(
        &[
            ("model", &model.to_str().unwrap()),
            ("detect-interval", &1u32),
            ("tracking", &false),
            ("transition-ms", &0u32),
        ],
        &info,
    );
    let element = h.element().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let setter = {
        let (element, stop) = (element.clone(), stop.clone());
        let models = [model.clone(), copy.clone()];
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                element.set_property_from_str("expression", expressions[n % 2]);
                element.set_property("intensity", intensities[n % 3]);
                if n.is_multiple_of(7) {
                    element.set_property("model", models[n / 7 % 2].to_str().unwrap());
                }
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            n
        })
    };
    let mut seen = std::collections::HashSet::new();
    for frame in 0..30 {
        let (_, out) = run_one(&mut h, buffer.copy());
        let metas: Vec<_> = out
            .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
            .collect();
        assert_eq!(metas.len(), 1, "frame {frame}: one face expected");
        let p = metas[0].param("detection").unwrap();
        let e = p.get::<&str>("expression").unwrap().to_string();
        let i = p.get::<f64>("intensity").unwrap();
        let (_, reference) = references
            .iter()
            .find(|((re, ri), _)| *re == e && *ri == i)
            .unwrap_or_else(|| panic!("frame {frame}: unexpected settings {e} {i}"));
        let off = count_differences(&to_rgb(&out, &info), reference, 1);
        assert_eq!(
            off, 0,
            "frame {frame}: {off} pixels differ from {e} at intensity {i}"
        );
        seen.insert((e, (i * 10.0) as u32));
    }
    stop.store(true, Ordering::Relaxed);
    let changes = setter.join().unwrap();
    eprintln!(
        "{changes} property changes over 30 frames, {} settings seen",
        seen.len()
    );
    assert!(
        seen.len() >= 3,
        "only {seen:?} seen: the other thread's changes did not reach the frames"
    );
    std::fs::remove_dir_all(&copy).unwrap();
}
