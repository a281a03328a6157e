// SPDX-License-Identifier: MIT OR Apache-2.0
//! Soak and multi-stream benchmark of `faceexpression` (prints numbers; asserts only
//! that every frame comes out and that the streams agree).
//!
//! ```sh
//! source .deps/env.sh
//! cargo run --release -p gst-plugin-reggan --example soak -- soak [FRAMES] [SIZE]
//! cargo run --release -p gst-plugin-reggan --example soak -- streams [FRAMES] [STREAMS]
//! ```
//!
//! `soak`: FRAMES (default 100000) frames of SIZE px (default 256, square) through
//! `appsrc ! faceexpression ! appsink`: the photo's face moves, leaves for a while and
//! comes back, and `expression`, `intensity` and `detect-interval` change from the
//! application thread. It prints the process's resident memory every FRAMES/20 frames
//! and the slope of a least-squares line through the second half of those samples, in
//! KB per 1,000 frames (the first half includes start-up growth: allocator arenas,
//! OpenCV's and ONNX Runtime's caches).
//!
//! `streams`: STREAMS (default 4) pipelines in one process, each in its own thread,
//! push the same FRAMES (default 600) frames; prints each stream's frames per second
//! and checks that every stream's output is bit-identical to a single stream's run.
//!
//! Frames come from `$REGGAN_TEST_IMAGE` (the astronaut photo, from scripts/setup.sh).

use std::time::Instant;

use gst::prelude::*;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One frame's pixels and what the application changes before pushing it.
struct Scene {
    with_face: reggan::RgbImage,
    without_face: reggan::RgbImage,
}

impl Scene {
    fn new(size: usize) -> Result<Self> {
        let path = std::env::var_os("REGGAN_TEST_IMAGE")
            .ok_or("source .deps/env.sh ($REGGAN_TEST_IMAGE: the test photo)")?;
        let photo = reggan::RgbImage::load(std::path::Path::new(&path))?;
        let with_face = shrink(&photo, size);
        let mut without_face = with_face.clone();
        without_face.data.fill(120);
        Ok(Scene {
            with_face,
            without_face,
        })
    }

    /// Frame `i`: the face for 240 frames, then 60 frames without it; while present it
    /// drifts right and back by up to 12 px (so tracking has to follow it).
    fn has_face(i: u64) -> bool {
        i % 300 < 240
    }

    fn frame(&self, i: u64) -> reggan::RgbImage {
        let phase = i % 300;
        if !Self::has_face(i) {
            return self.without_face.clone();
        }
        let shift = (phase % 48).min(48 - phase % 48) as usize / 2;
        let src = &self.with_face;
        let mut out = self.without_face.clone();
        let w = src.width;
        for y in 0..src.height {
            let row = &src.data[y * w * 3..(y * w + w - shift) * 3];
            out.data[(y * w + shift) * 3..(y * w + w) * 3].copy_from_slice(row);
        }
        out
    }
}

/// `img` scaled to `size` x `size` by averaging the source pixels under each output pixel.
fn shrink(img: &reggan::RgbImage, size: usize) -> reggan::RgbImage {
    let mut out = reggan::RgbImage::new(size, size);
    let span = |i: usize, n: usize| (i * n / size)..((i + 1) * n / size).max(i * n / size + 1);
    for y in 0..size {
        for x in 0..size {
            let (ys, xs) = (span(y, img.height), span(x, img.width));
            let count = (ys.len() * xs.len()) as u32;
            for c in 0..3 {
                let sum: u32 = ys
                    .clone()
                    .flat_map(|sy| xs.clone().map(move |sx| (sy, sx)))
                    .map(|(sy, sx)| img.data[(sy * img.width + sx) * 3 + c] as u32)
                    .sum();
                out.data[(y * size + x) * 3 + c] = (sum / count) as u8;
            }
        }
    }
    out
}

struct Stream {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    filter: gst::Element,
}

impl Stream {
    fn new(size: usize) -> Result<Self> {
        let info =
            gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, size as u32, size as u32)
                .fps(gst::Fraction::new(30, 1))
                .build()?;
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(&info.to_caps()?)
            .format(gst::Format::Time)
            .build();
        // One intra-op thread per stream: streams run side by side, not one model's
        // threads fighting another's.
        let filter = gst::ElementFactory::make("faceexpression")
            .property("threads", 1u32)
            .build()?;
        let sink = gst_app::AppSink::builder().sync(false).build();
        pipeline.add_many([src.upcast_ref(), &filter, sink.upcast_ref()])?;
        gst::Element::link_many([src.upcast_ref(), &filter, sink.upcast_ref()])?;
        pipeline.set_state(gst::State::Playing)?;
        Ok(Stream {
            pipeline,
            src,
            sink,
            filter,
        })
    }

    /// Pushes one frame and returns what came out.
    fn process(&self, img: &reggan::RgbImage, i: u64) -> Result<gst::Buffer> {
        let mut buffer = gst::Buffer::from_mut_slice(img.data.clone());
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(i * 33));
        self.src.push_buffer(buffer)?;
        let sample = self
            .sink
            .try_pull_sample(gst::ClockTime::from_seconds(60))
            .ok_or_else(|| format!("frame {i} did not come out"))?;
        Ok(sample.buffer_owned().ok_or("a sample without a buffer")?)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(-1)
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    num / den
}

fn soak(frames: u64, size: usize) -> Result<()> {
    let scene = Scene::new(size)?;
    let stream = Stream::new(size)?;
    let expressions = ["happy", "sad", "surprised", "angry"];
    let every = (frames / 20).max(1);
    let mut samples = Vec::new();
    let start = Instant::now();
    let (mut faces, mut stale, mut lost) = (0u64, 0u64, 0u64);
    println!("frames,rss_kb,seconds");
    for i in 0..frames {
        // The application changes the element's settings while it plays.
        if i % 500 == 0 {
            let k = (i / 500) as usize;
            stream
                .filter
                .set_property_from_str("expression", expressions[k % expressions.len()]);
            stream
                .filter
                .set_property("intensity", [1.0f64, 0.5, 1.5][k % 3]);
            stream
                .filter
                .set_property("detect-interval", [3u32, 1, 10][k % 3]);
        }
        let out = stream.process(&scene.frame(i), i)?;
        let metas = out
            .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
            .count() as u64;
        faces += metas;
        // A face on a frame without one is a stale face; none on a frame with one
        // (after the first full search) a lost one.
        let present = Scene::has_face(i);
        stale += u64::from(!present && metas > 0);
        lost += u64::from(present && metas == 0 && i % 300 >= 10);
        if (i + 1) % every == 0 {
            let rss = rss_kb();
            println!("{},{rss},{:.1}", i + 1, start.elapsed().as_secs_f64());
            samples.push(((i + 1) as f64, rss as f64));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let later = &samples[samples.len() / 2..];
    println!(
        "soak: {frames} frames of {size}x{size} in {secs:.0} s ({:.1} fps), {faces} face metas ({stale} on frames without the face, {lost} frames with it missed); RSS {} -> {} KB; slope over the second half {:.2} KB per 1000 frames",
        frames as f64 / secs,
        samples.first().map_or(0.0, |s| s.1),
        samples.last().map_or(0.0, |s| s.1),
        slope(later) * 1000.0
    );
    Ok(())
}

/// Runs `frames` frames through a new stream; returns a hash of each output frame.
fn run_stream(scene: &Scene, frames: u64, size: usize) -> Result<(Vec<u64>, f64)> {
    let stream = Stream::new(size)?;
    let start = Instant::now();
    let mut hashes = Vec::with_capacity(frames as usize);
    for i in 0..frames {
        let out = stream.process(&scene.frame(i), i)?;
        let map = out.map_readable()?;
        let h = map.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        hashes.push(h);
    }
    Ok((hashes, frames as f64 / start.elapsed().as_secs_f64()))
}

fn streams(frames: u64, count: usize, size: usize) -> Result<()> {
    let scene = Scene::new(size)?;
    let (single, fps) = run_stream(&scene, frames, size)?;
    println!("1 stream: {fps:.1} fps");
    let results: Vec<Result<(Vec<u64>, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .map(|_| s.spawn(|| run_stream(&scene, frames, size).map_err(|e| e.to_string())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stream thread").map_err(Into::into))
            .collect()
    });
    let mut all_equal = true;
    for (k, r) in results.into_iter().enumerate() {
        let (hashes, fps) = r?;
        let same = hashes == single;
        all_equal &= same;
        println!(
            "stream {k} of {count}: {fps:.1} fps, output {} the single stream's",
            if same {
                "identical to"
            } else {
                "DIFFERENT from"
            }
        );
    }
    if !all_equal {
        return Err("the streams' outputs differ from a single stream's".into());
    }
    Ok(())
}

fn main() -> Result<()> {
    gst::init()?;
    gstreggan::plugin_register_static()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| -> Result<u64> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    match args.first().map(String::as_str) {
        Some("soak") => soak(number(1, 100_000)?, number(2, 256)? as usize),
        Some("streams") => streams(number(1, 600)?, number(2, 4)? as usize, 256),
        _ => Err("usage: soak soak [FRAMES] [SIZE] | soak streams [FRAMES] [STREAMS]".into()),
    }
}
