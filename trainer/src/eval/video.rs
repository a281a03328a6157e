//! `reggan-train eval --video DIR`: temporal quality of the product path on real clips.
//!
//! Each clip is decoded (GStreamer), and every frame goes through
//! `reggan::FrameProcessor::process_video` (what the element runs), once with tracking
//! off (each frame's raw detections, no transitions: the behaviour before the tracker)
//! and once with the defaults. Per clip and setting:
//! - the temporal warping error (Lai et al. 2018) inside the face: mean |O_t -
//!   warp(O_{t-1})| over the face box, with the backward optical flow (OpenCV DIS)
//!   computed from the *input* frames, for the output divided by the same for the
//!   input (1 = the edit adds no flicker);
//! - coverage: of the frames in which an independent full-frame search finds a face
//!   within the yaw limit, the share in which that face's box was changed;
//! - frames per second of the processor (one thread, decoding not counted).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use opencv::core::{Mat, Rect, Vec2f, CV_32FC2};
use opencv::prelude::*;
use opencv::{imgproc, video};
use reggan::detect::BoxF;
use reggan::{
    Device, FaceDetector, FrameProcessor, HeadPose, ProcessorConfig, RgbImage, TrackingOptions,
};
use serde::Serialize;

/// One decoded frame and its presentation time.
pub struct Frame {
    pub image: RgbImage,
    pub time: Duration,
}

/// Decodes up to `max_frames` frames of a video file to packed RGB.
pub fn decode(path: &Path, max_frames: usize) -> Result<Vec<Frame>> {
    gst::init().context("cannot initialise GStreamer")?;
    if !path.is_file() {
        bail!("video {} does not exist", path.display());
    }
    let pipeline = gst::parse::launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
    )?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow!("not a pipeline"))?;
    let src = pipeline.by_name("src").expect("named in the description");
    src.set_property("location", path.to_string_lossy().to_string());
    let sink = pipeline
        .by_name("sink")
        .expect("named in the description")
        .downcast::<gst_app::AppSink>()
        .map_err(|_| anyhow!("not an appsink"))?;
    pipeline.set_state(gst::State::Playing)?;
    let mut frames = Vec::new();
    let result = (|| -> Result<()> {
        while frames.len() < max_frames {
            let Ok(sample) = sink.pull_sample() else {
                break; // end of stream
            };
            let caps = sample.caps().context("sample without caps")?;
            let s = caps.structure(0).context("caps without structure")?;
            let (w, h) = (
                s.get::<i32>("width")? as usize,
                s.get::<i32>("height")? as usize,
            );
            let buffer = sample.buffer().context("sample without buffer")?;
            let map = buffer.map_readable()?;
            // GStreamer pads RGB rows to 4 bytes.
            let stride = (w * 3).div_ceil(4) * 4;
            let mut image = RgbImage::new(w, h);
            for y in 0..h {
                image.data[y * w * 3..(y + 1) * w * 3]
                    .copy_from_slice(&map[y * stride..y * stride + w * 3]);
            }
            let time = buffer.pts().map(Duration::from).unwrap_or_default();
            frames.push(Frame { image, time });
        }
        Ok(())
    })();
    let bus_error = pipeline.bus().and_then(|bus| {
        bus.pop_filtered(&[gst::MessageType::Error])
            .map(|m| match m.view() {
                gst::MessageView::Error(e) => e.error().to_string(),
                _ => String::new(),
            })
    });
    pipeline.set_state(gst::State::Null)?;
    result?;
    if frames.is_empty() {
        bail!(
            "no frame decoded from {}{}",
            path.display(),
            bus_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(frames)
}

/// Backward flow from `current` to `previous` (`current(x) ≈ previous(x + flow(x))`)
/// over `region` of both frames, by OpenCV DIS on grey pixels.
fn backward_flow(
    dis: &mut opencv::core::Ptr<video::DISOpticalFlow>,
    current: &RgbImage,
    previous: &RgbImage,
    region: Rect,
) -> Result<Mat> {
    let grey = |img: &RgbImage| -> Result<Mat> {
        let mut copy = img.clone();
        let frame = copy.as_frame();
        let full = frame.as_mat()?;
        let mut g = Mat::default();
        imgproc::cvt_color_def(&Mat::roi(&full, region)?, &mut g, imgproc::COLOR_RGB2GRAY)?;
        Ok(g)
    };
    let mut flow = Mat::default();
    dis.calc(&grey(current)?, &grey(previous)?, &mut flow)?;
    Ok(flow)
}

/// Mean absolute difference (RGB, 0-255) between `current` and `previous` warped by
/// `flow` (backward, over `region`), counted inside `inner` (frame pixels, within
/// `region`) where the flow stays inside `region`.
pub fn warping_error(
    current: &RgbImage,
    previous: &RgbImage,
    flow: &Mat,
    region: Rect,
    inner: Rect,
) -> Result<f64> {
    if flow.typ() != CV_32FC2 || flow.rows() != region.height || flow.cols() != region.width {
        bail!("flow does not match the region");
    }
    let f = flow.data_typed::<Vec2f>()?;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for y in inner.y..inner.y + inner.height {
        for x in inner.x..inner.x + inner.width {
            let v = f[((y - region.y) * region.width + (x - region.x)) as usize];
            let (sx, sy) = (x as f32 + v[0], y as f32 + v[1]);
            let (x0, y0) = (sx.floor(), sy.floor());
            if x0 < region.x as f32
                || y0 < region.y as f32
                || x0 + 1.0 >= (region.x + region.width) as f32
                || y0 + 1.0 >= (region.y + region.height) as f32
            {
                continue;
            }
            let (ax, ay) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as usize, y0 as usize);
            let here = current.pixel(x as usize, y as usize);
            for (c, &value) in here.iter().enumerate() {
                let p = |xx: usize, yy: usize| previous.pixel(xx, yy)[c] as f32;
                let warped = (1.0 - ay) * ((1.0 - ax) * p(x0, y0) + ax * p(x0 + 1, y0))
                    + ay * ((1.0 - ax) * p(x0, y0 + 1) + ax * p(x0 + 1, y0 + 1));
                sum += (value as f32 - warped).abs() as f64;
            }
            n += 3;
        }
    }
    Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
}

/// A box clipped to the frame in whole pixels, grown by `grow` of its size each side.
fn rect_of(b: &BoxF, grow: f32, width: usize, height: usize) -> Option<Rect> {
    let (gx, gy) = (b.w * grow, b.h * grow);
    let x0 = (b.x - gx).floor().max(0.0) as i32;
    let y0 = (b.y - gy).floor().max(0.0) as i32;
    let x1 = ((b.x + b.w + gx).ceil() as i32).min(width as i32);
    let y1 = ((b.y + b.h + gy).ceil() as i32).min(height as i32);
    (x1 - x0 >= 8 && y1 - y0 >= 8).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
}

fn changed_inside(a: &RgbImage, b: &RgbImage, r: Rect) -> bool {
    (r.y..r.y + r.height).any(|y| {
        let o = (y as usize * a.width + r.x as usize) * 3;
        let n = r.width as usize * 3;
        a.data[o..o + n] != b.data[o..o + n]
    })
}

/// One clip under one setting.
#[derive(Debug, Clone, Serialize)]
pub struct ClipRow {
    pub clip: String,
    pub setting: String,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// Warping error inside the face: output, input and their ratio.
    pub warp_error_output: f64,
    pub warp_error_input: f64,
    pub warp_error_ratio: f64,
    /// Frames with a face within the yaw limit, and the share of them changed.
    pub frames_with_face: usize,
    pub coverage: f64,
    pub fps: f64,
}

/// What the independent reference search sees in each input frame: the largest face
/// within the yaw limit, if any.
fn reference_faces(frames: &[Frame], max_yaw: f32) -> Result<Vec<Option<BoxF>>> {
    let mut detector = FaceDetector::new(reggan::DetectorKind::Auto)?;
    frames
        .iter()
        .map(|f| {
            let mut img = f.image.clone();
            let faces = detector.detect(&img.as_frame(), 32.0)?;
            Ok(faces
                .into_iter()
                .filter(|face| HeadPose::estimate(&face.keypoints).yaw.abs() < max_yaw)
                .max_by(|a, b| a.bbox.area().total_cmp(&b.bbox.area()))
                .map(|face| face.bbox))
        })
        .collect()
}

/// Runs one clip through the processor and measures it.
fn measure_clip(
    model: &Path,
    name: &str,
    frames: &[Frame],
    faces: &[Option<BoxF>],
    setting: &str,
    config: ProcessorConfig,
) -> Result<ClipRow> {
    let mut processor = FrameProcessor::new(model, config)?;
    processor.set_detect_interval(reggan::processor::DEFAULT_DETECT_INTERVAL);
    let mut outputs = Vec::with_capacity(frames.len());
    let mut busy = Duration::ZERO;
    for f in frames {
        let mut out = f.image.clone();
        let t = Instant::now();
        processor.process_video(&mut out.as_frame(), f.time)?;
        busy += t.elapsed();
        outputs.push(out);
    }
    let (w, h) = (frames[0].image.width, frames[0].image.height);
    let mut dis = video::DISOpticalFlow::create(video::DISOpticalFlow_PRESET_MEDIUM)?;
    let (mut e_out, mut e_in, mut pairs) = (0.0, 0.0, 0usize);
    for t in 1..frames.len() {
        let (Some(b), Some(_)) = (&faces[t], &faces[t - 1]) else {
            continue;
        };
        let (Some(inner), Some(region)) = (rect_of(b, 0.0, w, h), rect_of(b, 0.5, w, h)) else {
            continue;
        };
        let flow = backward_flow(&mut dis, &frames[t].image, &frames[t - 1].image, region)?;
        let ei = warping_error(&frames[t].image, &frames[t - 1].image, &flow, region, inner)?;
        let eo = warping_error(&outputs[t], &outputs[t - 1], &flow, region, inner)?;
        if ei.is_finite() && eo.is_finite() {
            e_in += ei;
            e_out += eo;
            pairs += 1;
        }
    }
    let with_face: Vec<usize> = (0..frames.len()).filter(|&i| faces[i].is_some()).collect();
    let changed = with_face
        .iter()
        .filter(|&&i| {
            let b = faces[i].as_ref().expect("filtered");
            rect_of(b, 0.0, w, h).is_some_and(|r| changed_inside(&frames[i].image, &outputs[i], r))
        })
        .count();
    let n = pairs.max(1) as f64;
    Ok(ClipRow {
        clip: name.into(),
        setting: setting.into(),
        width: w,
        height: h,
        frames: frames.len(),
        warp_error_output: e_out / n,
        warp_error_input: e_in / n,
        warp_error_ratio: if e_in > 0.0 { e_out / e_in } else { f64::NAN },
        frames_with_face: with_face.len(),
        coverage: changed as f64 / with_face.len().max(1) as f64,
        fps: frames.len() as f64 / busy.as_secs_f64(),
    })
}

/// The settings compared: the behaviour before tracking, and the defaults.
pub fn settings(expression: &str) -> Vec<(String, ProcessorConfig)> {
    let base = ProcessorConfig {
        expression: expression.into(),
        device: Device::Cpu,
        threads: 1,
        ..Default::default()
    };
    let off = ProcessorConfig {
        tracking: TrackingOptions::raw(),
        transition: Duration::ZERO,
        ..base.clone()
    };
    vec![("tracking off".into(), off), ("default".into(), base)]
}

/// The video files (mp4, mkv, webm, mov, avi) of a folder, sorted.
pub fn clips_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut clips: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the video folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["mp4", "mkv", "webm", "mov", "avi"].contains(&e))
        })
        .collect();
    clips.sort();
    if clips.is_empty() {
        bail!(
            "no video files (mp4, mkv, webm, mov, avi) in {}",
            dir.display()
        );
    }
    Ok(clips)
}

/// Measures every clip of `dir` under every setting; `extra` adds settings (tuning).
pub fn run(
    model: &Path,
    dir: &Path,
    expression: &str,
    max_frames: usize,
    extra: Vec<(String, ProcessorConfig)>,
) -> Result<Vec<ClipRow>> {
    let mut rows = Vec::new();
    let mut all = settings(expression);
    all.extend(extra);
    for clip in clips_in(dir)? {
        let name = clip
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let frames = decode(&clip, max_frames)?;
        let faces = reference_faces(&frames, reggan::pose::DEFAULT_MAX_YAW)?;
        for (setting, config) in &all {
            let row = measure_clip(model, &name, &frames, &faces, setting, config.clone())?;
            eprintln!("{}", row_line(&row));
            rows.push(row);
        }
    }
    Ok(rows)
}

pub fn row_line(r: &ClipRow) -> String {
    format!(
        "| {} | {}x{} | {} | {} | {:.2} / {:.2} | **{:.3}** | {:.1} % of {} | {:.1} |",
        r.clip,
        r.width,
        r.height,
        r.frames,
        r.setting,
        r.warp_error_output,
        r.warp_error_input,
        r.warp_error_ratio,
        100.0 * r.coverage,
        r.frames_with_face,
        r.fps
    )
}

/// The table as Markdown, with the mean ratio per setting.
pub fn markdown(rows: &[ClipRow]) -> String {
    let mut s = String::from(
        "| clip | size | frames | setting | warping error out / in | ratio | coverage | fps |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &row_line(r);
        s.push('\n');
    }
    let mut names: Vec<&str> = rows.iter().map(|r| r.setting.as_str()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    for name in names {
        let of: Vec<&ClipRow> = rows.iter().filter(|r| r.setting == name).collect();
        let mean = |f: fn(&ClipRow) -> f64| of.iter().map(|r| f(r)).sum::<f64>() / of.len() as f64;
        s += &format!(
            "\n{name}: mean warping-error ratio {:.3}, worst {:.3}, mean coverage {:.1} %, mean fps {:.1}",
            mean(|r| r.warp_error_ratio),
            of.iter().map(|r| r.warp_error_ratio).fold(0.0, f64::max),
            100.0 * mean(|r| r.coverage),
            mean(|r| r.fps)
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::Scalar;

    /// A textured image shifted by (dx, dy) whole pixels.
    fn textured(w: usize, h: usize, dx: i64, dy: i64) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as i64 - dx, y as i64 - dy);
                // At most 200 + 50: brightening by 4 never saturates.
                let val = ((u * 7 + v * 13).rem_euclid(31) * 6
                    + (u.div_euclid(5) + v.div_euclid(3)).rem_euclid(2) * 20)
                    as u8;
                let i = (y * w + x) * 3;
                img.data[i..i + 3].copy_from_slice(&[val, val / 2, 250 - val]);
            }
        }
        img
    }

    fn flow_of(region: Rect, dx: f32, dy: f32) -> Mat {
        Mat::new_rows_cols_with_default(
            region.height,
            region.width,
            CV_32FC2,
            Scalar::new(dx as f64, dy as f64, 0.0, 0.0),
        )
        .unwrap()
    }

    #[test]
    fn warping_error_is_zero_for_true_motion_and_counts_flicker() {
        let (prev, cur) = (textured(64, 48, 0, 0), textured(64, 48, 3, 2));
        let region = Rect::new(8, 8, 48, 32);
        let inner = Rect::new(16, 14, 30, 20);
        // The true backward flow: cur(x) = prev(x - (3, 2)).
        let right =
            warping_error(&cur, &prev, &flow_of(region, -3.0, -2.0), region, inner).unwrap();
        assert!(right.abs() < 1e-9, "true motion left {right}");
        let wrong = warping_error(&cur, &prev, &flow_of(region, 0.0, 0.0), region, inner).unwrap();
        assert!(wrong > 10.0);
        // A frame brightened by 4 inside the inner box: error 4 per channel.
        let mut flicker = cur.clone();
        for y in 14..34 {
            for x in 16..46 {
                for c in 0..3 {
                    let i = (y * 64 + x) * 3 + c;
                    flicker.data[i] = flicker.data[i].saturating_add(4);
                }
            }
        }
        let e =
            warping_error(&flicker, &prev, &flow_of(region, -3.0, -2.0), region, inner).unwrap();
        assert!((e - 4.0).abs() < 1e-9, "flicker of 4 measured as {e}");
    }

    #[test]
    fn changed_inside_sees_one_pixel() {
        let a = textured(20, 20, 0, 0);
        let mut b = a.clone();
        assert!(!changed_inside(&a, &b, Rect::new(2, 2, 10, 10)));
        b.data[(5 * 20 + 6) * 3] ^= 1;
        assert!(changed_inside(&a, &b, Rect::new(2, 2, 10, 10)));
        assert!(!changed_inside(&a, &b, Rect::new(10, 10, 5, 5)));
    }
}
