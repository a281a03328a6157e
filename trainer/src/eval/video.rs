//! `reggan-train eval --video DIR`: temporal quality of the product path on real clips.
//!
//! Each clip is decoded (GStreamer), and every frame goes through
//! `reggan::FrameProcessor::process_video` (what the element runs), once with tracking
//! off (each frame's raw detections, no transitions: the behaviour before the tracker)
//! and once with the defaults. Per clip and setting:
//! - the temporal warping error (Lai et al. 2018) inside the faces: mean |O_t -
//!   warp(O_{t-1})| over each face box, with the backward optical flow (OpenCV DIS)
//!   computed from the *input* frames, for the output divided by the same for the
//!   input (1 = the edit adds no flicker), summed over every face an independent
//!   full-frame search finds within the yaw limit (several people in a clip all count);
//! - coverage: of those faces, over all frames, the share whose box was changed;
//! - frames per second of the processor (one thread, decoding not counted);
//! - on sampled frames (every [`SAMPLE_EVERY`]th frame with a face, at most
//!   [`SAMPLE_MAX`]), the still `eval`'s yardsticks on the face aligned to the LSRF
//!   template (128 px, the crops the models are scored on), from the input frame's
//!   reference face: ECS (fer's mini-Xception labels the output as the target; the
//!   input's share for reference) and identity (dlib distance input vs output face of
//!   the same frame, and the share under [`fss::SAME_PERSON`]). Without the fer or dlib
//!   weights these columns stay empty.
//!
//! A still photo given instead of a folder becomes a synthetic clip ([`synthetic_clip`]):
//! the photo moved and turned along a path over a textured background. `--strip` writes
//! a picture of consecutive frames of one clip, input row above output row ([`strip`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use opencv::core::{Mat, Rect, Scalar, Size, Vec2f, CV_32FC2, CV_64F, CV_8UC3};
use opencv::prelude::*;
use opencv::{imgproc, video};
use reggan::detect::BoxF;
use reggan::{
    Alignment, Device, Face, FaceDetector, FrameProcessor, HeadPose, ProcessorConfig, RgbImage,
    Template, TrackingOptions,
};
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{fer, fss};

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
    /// Warping error inside the faces: output, input and their ratio.
    pub warp_error_output: f64,
    pub warp_error_input: f64,
    pub warp_error_ratio: f64,
    /// Frames with a face within the yaw limit, and the share of those faces (every
    /// face of every frame) that were changed.
    pub frames_with_face: usize,
    pub coverage: f64,
    pub fps: f64,
    /// Frames sampled for expression and identity ([`sample_frames`]).
    pub sampled: usize,
    /// ECS on the sampled frames: the share of output faces fer labels as the target,
    /// and the same share of the input faces (what the clip already shows). `None`
    /// without fer's weights or for an expression fer has no class of.
    pub ecs_output: Option<f64>,
    pub ecs_input: Option<f64>,
    /// Identity on the sampled frames: mean dlib distance, input face vs output face of
    /// the same frame, and the share under [`fss::SAME_PERSON`]. `None` without dlib's
    /// models.
    pub identity_distance: Option<f64>,
    pub identity_same: Option<f64>,
}

/// What the independent reference search sees in each input frame: every face within
/// the yaw limit, the largest first.
fn reference_faces(frames: &[Frame], max_yaw: f32) -> Result<Vec<Vec<Face>>> {
    let mut detector = FaceDetector::new(reggan::DetectorKind::Auto)?;
    frames
        .iter()
        .map(|f| {
            let mut img = f.image.clone();
            let mut faces: Vec<Face> = detector
                .detect(&img.as_frame(), 32.0)?
                .into_iter()
                .filter(|face| HeadPose::estimate(&face.keypoints).yaw.abs() < max_yaw)
                .collect();
            faces.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
            Ok(faces)
        })
        .collect()
}

/// Each frame's largest face (what expression and identity are scored on).
fn largest(faces: &[Vec<Face>]) -> Vec<Option<Face>> {
    faces.iter().map(|f| f.first().cloned()).collect()
}

/// Expression and identity are measured on every `SAMPLE_EVERY`th frame with a face...
pub const SAMPLE_EVERY: usize = 15;
/// ... at most this many per clip.
pub const SAMPLE_MAX: usize = 10;

/// Indices of frames with a face (`has_face`): the `first`-th of them (counting from 0),
/// then every `step`-th, `n` at most.
pub fn frames_with_face(has_face: &[bool], first: usize, step: usize, n: usize) -> Vec<usize> {
    has_face
        .iter()
        .enumerate()
        .filter(|(_, &f)| f)
        .map(|(i, _)| i)
        .skip(first)
        .step_by(step.max(1))
        .take(n)
        .collect()
}

/// The frames sampled for expression and identity: the `every`-th, 2·`every`-th, …
/// frame with a face (so the first lies past the ramp-in of the edit), `max` at most.
pub fn sample_frames(has_face: &[bool], every: usize, max: usize) -> Vec<usize> {
    frames_with_face(has_face, every.max(1) - 1, every, max)
}

/// The still `eval`'s instruments, each `None` when its weights are absent.
pub struct FaceScorers {
    pub fer: Option<fer::Fer>,
    pub dlib: Option<fss::FaceRecognizer>,
}

impl FaceScorers {
    /// No instruments: the expression and identity columns stay empty.
    pub fn none() -> Self {
        FaceScorers {
            fer: None,
            dlib: None,
        }
    }

    /// fer's weights and dlib's models; what is missing is said, and its columns stay
    /// empty (the video measures do not need them).
    pub fn load(fer_weights: &Path, dlib_dir: &Path, no_fss: bool) -> Self {
        let fer = fer::Fer::load(fer_weights)
            .map_err(|e| eprintln!("video: the ECS columns stay empty: {e:#}"))
            .ok();
        let dlib = if no_fss {
            eprintln!("video: the identity columns stay empty (--no-fss)");
            None
        } else {
            fss::FaceRecognizer::load(dlib_dir)
                .map_err(|e| eprintln!("video: the identity columns stay empty: {e:#}"))
                .ok()
        };
        FaceScorers { fer, dlib }
    }
}

/// Side of the aligned crops scored: the `prepare` cache's, the crops still `eval` scores.
const SCORE_CROP: usize = crate::data::CROP_SIZE;

/// Each image's face aligned to the LSRF template of `size` pixels (the crops the
/// models see and still `eval` scores), as [N,3,S,S] in [0,1].
pub fn aligned_faces(images: &[&RgbImage], faces: &[&Face], size: usize) -> Result<Tensor> {
    let template = Template::lsrf(size);
    let s = size as i64;
    let mut crops = Vec::with_capacity(images.len());
    for (img, face) in images.iter().zip(faces) {
        let mut copy = (*img).clone();
        let crop = Alignment::for_face(face, &template)?.crop_rgb(&copy.as_frame())?;
        crops.push(
            Tensor::from_slice(&crop.data)
                .view([s, s, 3])
                .permute([2, 0, 1])
                .to_kind(Kind::Float)
                / 255.0,
        );
    }
    Ok(if crops.is_empty() {
        Tensor::zeros([0, 3, s, s], (Kind::Float, tch::Device::Cpu))
    } else {
        Tensor::stack(&crops, 0)
    })
}

/// Expression and identity of output faces against the input faces of the same frames.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaceScores {
    pub ecs_output: Option<f64>,
    pub ecs_input: Option<f64>,
    pub identity_distance: Option<f64>,
    pub identity_same: Option<f64>,
}

/// Scores aligned output faces against the aligned input faces of the same frames
/// ([N,3,S,S] each), with fer's class `label` as the target.
pub fn score_faces(
    scorers: &mut FaceScorers,
    label: Option<usize>,
    inputs: &Tensor,
    outputs: &Tensor,
) -> Result<FaceScores> {
    let mut scores = FaceScores::default();
    if inputs.size()[0] == 0 {
        return Ok(scores);
    }
    if let (Some(fer), Some(label)) = (&scorers.fer, label) {
        scores.ecs_output = Some(super::ecs(&fer.classify(outputs)?.1, label));
        scores.ecs_input = Some(super::ecs(&fer.classify(inputs)?.1, label));
    }
    if let Some(dlib) = &mut scorers.dlib {
        let d = fss::distances(&dlib.embed(inputs)?.vectors, &dlib.embed(outputs)?.vectors);
        scores.identity_distance = Some(d.mean(Kind::Float).double_value(&[]));
        scores.identity_same = Some(
            d.lt(fss::SAME_PERSON)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]),
        );
    }
    Ok(scores)
}

/// One decoded clip and what is measured on it whatever the setting.
struct ClipInput<'a> {
    name: &'a str,
    frames: &'a [Frame],
    /// Every reference face of each frame, the largest first ([`reference_faces`]):
    /// the samples are scored on the largest.
    faces: &'a [Vec<Face>],
    samples: &'a [usize],
    /// The sampled frames' aligned input faces.
    crops: &'a Tensor,
}

/// Every frame through the processor, as the element runs it: the outputs and the time
/// spent.
fn process(
    model: &Path,
    frames: &[Frame],
    config: ProcessorConfig,
) -> Result<(Vec<RgbImage>, Duration)> {
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
    Ok((outputs, busy))
}

/// Runs one clip through the processor and measures it; also returns the outputs.
fn measure_clip(
    model: &Path,
    clip: &ClipInput,
    setting: &str,
    config: ProcessorConfig,
    scorers: &mut FaceScorers,
    label: Option<usize>,
) -> Result<(ClipRow, Vec<RgbImage>)> {
    let (frames, faces) = (clip.frames, clip.faces);
    let (outputs, busy) = process(model, frames, config)?;
    let (w, h) = (frames[0].image.width, frames[0].image.height);
    let mut dis = video::DISOpticalFlow::create(video::DISOpticalFlow_PRESET_MEDIUM)?;
    let (mut e_out, mut e_in, mut pairs) = (0.0, 0.0, 0usize);
    for t in 1..frames.len() {
        if faces[t - 1].is_empty() {
            continue;
        }
        for f in &faces[t] {
            let b = &f.bbox;
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
    }
    let shown: Vec<(usize, &Face)> = faces
        .iter()
        .enumerate()
        .flat_map(|(i, fs)| fs.iter().map(move |f| (i, f)))
        .collect();
    let changed = shown
        .iter()
        .filter(|(i, f)| {
            rect_of(&f.bbox, 0.0, w, h)
                .is_some_and(|r| changed_inside(&frames[*i].image, &outputs[*i], r))
        })
        .count();
    let sampled_out: Vec<&RgbImage> = clip.samples.iter().map(|&i| &outputs[i]).collect();
    let sampled_faces: Vec<&Face> = clip
        .samples
        .iter()
        .map(|&i| clip.faces[i].first().expect("sampled frames have a face"))
        .collect();
    let out_crops = aligned_faces(&sampled_out, &sampled_faces, SCORE_CROP)?;
    let scores = score_faces(scorers, label, clip.crops, &out_crops)?;
    let n = pairs.max(1) as f64;
    let row = ClipRow {
        clip: clip.name.into(),
        setting: setting.into(),
        width: w,
        height: h,
        frames: frames.len(),
        warp_error_output: e_out / n,
        warp_error_input: e_in / n,
        warp_error_ratio: if e_in > 0.0 { e_out / e_in } else { f64::NAN },
        frames_with_face: faces.iter().filter(|f| !f.is_empty()).count(),
        coverage: changed as f64 / shown.len().max(1) as f64,
        fps: frames.len() as f64 / busy.as_secs_f64(),
        sampled: clip.samples.len(),
        ecs_output: scores.ecs_output,
        ecs_input: scores.ecs_input,
        identity_distance: scores.identity_distance,
        identity_same: scores.identity_same,
    };
    Ok((row, outputs))
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

/// The setting the strip picture shows.
pub const STRIP_SETTING: &str = "default";

fn is_photo(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The clips of `dir`: its video files (mp4, mkv, webm, mov, avi), sorted; or, when
/// `dir` is a still photo (jpg, png), that photo (a synthetic clip, [`load_clip`]).
pub fn clips_in(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() && is_photo(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
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

/// Frame size of [`synthetic_clip`].
pub const SYNTHETIC_SIZE: (usize, usize) = (640, 480);

/// The background of [`synthetic_clip`] (BGR): squares of 20 px in two colours.
fn synthetic_background() -> Result<Mat> {
    let (w, h) = (SYNTHETIC_SIZE.0 as i32, SYNTHETIC_SIZE.1 as i32);
    let mut background = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::all(0.0))?;
    for y in 0..h {
        for x in 0..w {
            let v = 90 + ((x / 20 + y / 20) % 2) as u8 * 40;
            *background.at_2d_mut::<opencv::core::Vec3b>(y, x)? =
                opencv::core::Vec3b::from([v, v / 2 + 30, 200 - v]);
        }
    }
    Ok(background)
}

/// A clip made from a still photo, 30 frames a second: the photo, scaled to 400 px
/// high, over a textured 640×480 background, still for 12 frames, then moving back and
/// forth (at most 3 px a frame) and turning by up to 6 degrees about its centre.
pub fn synthetic_clip(photo: &RgbImage, frames: usize) -> Result<Vec<Frame>> {
    let (w, h) = (SYNTHETIC_SIZE.0 as i32, SYNTHETIC_SIZE.1 as i32);
    let scale = 400.0 / photo.height as f64;
    let bgr = photo.to_bgr_mat()?;
    let background = synthetic_background()?;
    let (px, py) = (photo.width as f64 / 2.0, photo.height as f64 / 2.0);
    (0..frames)
        .map(|i| {
            let s = i.saturating_sub(12) as f64;
            let angle = 6f64.to_radians() * (s / 11.0).sin();
            let cx = w as f64 / 2.0 + 60.0 * (s / 20.0).sin();
            let cy = h as f64 / 2.0 + 12.0 * (s / 9.0).sin();
            let (c, sn) = (angle.cos() * scale, angle.sin() * scale);
            // The photo's centre goes to (cx, cy).
            let m = [
                vec![c, -sn, cx - c * px + sn * py],
                vec![sn, c, cy - sn * px - c * py],
            ];
            let affine = Mat::from_slice_2d(&m)?;
            debug_assert_eq!(affine.typ(), CV_64F);
            let mut frame = background.try_clone()?;
            imgproc::warp_affine(
                &bgr,
                &mut frame,
                &affine,
                Size::new(w, h),
                imgproc::INTER_LINEAR,
                opencv::core::BORDER_TRANSPARENT,
                Scalar::default(),
            )?;
            Ok(Frame {
                image: RgbImage::from_bgr_mat(&frame)?,
                time: Duration::from_micros(i as u64 * 1_000_000 / 30),
            })
        })
        .collect()
}

/// A clip's frames: decoded from a video file, or [`synthetic_clip`] of a photo.
pub fn load_clip(path: &Path, max_frames: usize) -> Result<Vec<Frame>> {
    if is_photo(path) {
        synthetic_clip(&RgbImage::load(path)?, max_frames)
    } else {
        decode(path, max_frames)
    }
}

/// What `--strip` draws.
#[derive(Debug, Clone)]
pub struct StripOptions {
    /// The picture (PNG, or JPEG by the extension).
    pub path: PathBuf,
    /// The clip's file name (default: the first clip).
    pub clip: Option<String>,
    /// Frames shown, and every how many frames with a face.
    pub frames: usize,
    pub step: usize,
    /// The first frame shown: the how-many-th frame with a face (from 0).
    pub start: usize,
    /// Side of each cell, in pixels.
    pub cell: usize,
}

impl StripOptions {
    pub fn new(path: PathBuf, clip: Option<String>) -> Self {
        StripOptions {
            path,
            clip,
            frames: 6,
            step: 4,
            start: SAMPLE_EVERY - 1,
            cell: 160,
        }
    }
}

/// A square of `side` pixels centred on (`cx`, `cy`), moved (and if need be shrunk)
/// into a `width`×`height` frame.
pub fn square_in_frame(cx: f32, cy: f32, side: f32, width: usize, height: usize) -> Rect {
    let side = (side.round() as i32)
        .min(width as i32)
        .min(height as i32)
        .max(1);
    let x = ((cx - side as f32 / 2.0).round() as i32).clamp(0, width as i32 - side);
    let y = ((cy - side as f32 / 2.0).round() as i32).clamp(0, height as i32 - side);
    Rect::new(x, y, side, side)
}

/// `rect` of an image, resized (area) to `cell`×`cell`.
pub fn crop_resized(img: &RgbImage, rect: Rect, cell: usize) -> Result<RgbImage> {
    let mut copy = img.clone();
    let frame = copy.as_frame();
    let full = frame.as_mat()?;
    let roi = Mat::roi(&full, rect)?;
    let mut out = Mat::default();
    imgproc::resize(
        &roi,
        &mut out,
        Size::new(cell as i32, cell as i32),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    let out = if out.is_continuous() {
        out
    } else {
        out.try_clone()?
    };
    Ok(RgbImage {
        width: cell,
        height: cell,
        data: out.data_bytes()?.to_vec(),
    })
}

/// Input cells in the top row, the output cells below, left to right (all one size).
pub fn strip(inputs: &[RgbImage], outputs: &[RgbImage]) -> Result<RgbImage> {
    if inputs.is_empty() || inputs.len() != outputs.len() {
        bail!(
            "a strip needs as many outputs as inputs, at least one ({} and {})",
            inputs.len(),
            outputs.len()
        );
    }
    let (cw, ch) = (inputs[0].width, inputs[0].height);
    if inputs
        .iter()
        .chain(outputs)
        .any(|c| c.width != cw || c.height != ch)
    {
        bail!("the cells of a strip differ in size");
    }
    let n = inputs.len();
    let mut img = RgbImage::new(n * cw, 2 * ch);
    for (row, cells) in [inputs, outputs].into_iter().enumerate() {
        for (k, c) in cells.iter().enumerate() {
            for y in 0..ch {
                let dst = ((row * ch + y) * n * cw + k * cw) * 3;
                img.data[dst..dst + cw * 3].copy_from_slice(&c.data[y * cw * 3..(y + 1) * cw * 3]);
            }
        }
    }
    Ok(img)
}

/// The strip of frames `picked`: one square for all (around the union of their
/// reference faces, half as large again), so the face's motion shows.
pub fn strip_of(
    frames: &[Frame],
    outputs: &[RgbImage],
    faces: &[Option<Face>],
    picked: &[usize],
    cell: usize,
) -> Result<RgbImage> {
    let boxes: Vec<&BoxF> = picked
        .iter()
        .map(|&i| faces[i].as_ref().map(|f| &f.bbox))
        .collect::<Option<_>>()
        .context("a strip frame without a face")?;
    if boxes.is_empty() {
        bail!("no frame picked for the strip");
    }
    let x0 = boxes.iter().map(|b| b.x).fold(f32::INFINITY, f32::min);
    let y0 = boxes.iter().map(|b| b.y).fold(f32::INFINITY, f32::min);
    let x1 = boxes
        .iter()
        .map(|b| b.x + b.w)
        .fold(f32::NEG_INFINITY, f32::max);
    let y1 = boxes
        .iter()
        .map(|b| b.y + b.h)
        .fold(f32::NEG_INFINITY, f32::max);
    let (w, h) = (frames[0].image.width, frames[0].image.height);
    let r = square_in_frame(
        (x0 + x1) / 2.0,
        (y0 + y1) / 2.0,
        1.5 * (x1 - x0).max(y1 - y0),
        w,
        h,
    );
    let (mut ins, mut outs) = (Vec::new(), Vec::new());
    for &i in picked {
        ins.push(crop_resized(&frames[i].image, r, cell)?);
        outs.push(crop_resized(&outputs[i], r, cell)?);
    }
    strip(&ins, &outs)
}

fn write_strip(
    opts: &StripOptions,
    frames: &[Frame],
    outputs: &[RgbImage],
    faces: &[Option<Face>],
) -> Result<()> {
    let has_face: Vec<bool> = faces.iter().map(Option::is_some).collect();
    let picked = frames_with_face(&has_face, opts.start, opts.step, opts.frames);
    let img = strip_of(frames, outputs, faces, &picked, opts.cell)?;
    if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::data::save_rgb(img.width, img.height, img.data, &opts.path, 92)?;
    eprintln!(
        "wrote {} (frames {picked:?}; top: input, bottom: output)",
        opts.path.display()
    );
    Ok(())
}

/// Measures every clip of `dir` under every setting; `extra` adds settings (tuning).
/// No expression and identity columns (see [`run_with`]).
pub fn run(
    model: &Path,
    dir: &Path,
    expression: &str,
    max_frames: usize,
    extra: Vec<(String, ProcessorConfig)>,
) -> Result<Vec<ClipRow>> {
    run_with(
        model,
        dir,
        expression,
        max_frames,
        extra,
        &mut FaceScorers::none(),
        None,
    )
}

/// [`run`] with the expression and identity yardsticks `scorers` has, and the strip
/// picture when asked.
pub fn run_with(
    model: &Path,
    dir: &Path,
    expression: &str,
    max_frames: usize,
    extra: Vec<(String, ProcessorConfig)>,
    scorers: &mut FaceScorers,
    strip: Option<&StripOptions>,
) -> Result<Vec<ClipRow>> {
    let label = fer::fer_label(expression);
    if scorers.fer.is_some() && label.is_none() {
        eprintln!("video: fer has no class for {expression}; the ECS columns stay empty");
    }
    let clips = clips_in(dir)?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    if let Some(name) = strip.and_then(|s| s.clip.as_ref()) {
        if !clips.iter().any(|c| file_name(c) == *name) {
            bail!("no clip {name} in {} for the strip", dir.display());
        }
    }
    let mut rows = Vec::new();
    let mut all = settings(expression);
    all.extend(extra);
    for (k, clip) in clips.iter().enumerate() {
        let file = file_name(clip);
        let name = if is_photo(clip) {
            format!("{file} (synthetic clip)")
        } else {
            file.clone()
        };
        let frames = load_clip(clip, max_frames)?;
        let all_faces = reference_faces(&frames, reggan::pose::DEFAULT_MAX_YAW)?;
        let faces = largest(&all_faces);
        let has_face: Vec<bool> = faces.iter().map(Option::is_some).collect();
        let samples = sample_frames(&has_face, SAMPLE_EVERY, SAMPLE_MAX);
        let sampled_in: Vec<&RgbImage> = samples.iter().map(|&i| &frames[i].image).collect();
        let sampled_faces: Vec<&Face> = samples
            .iter()
            .map(|&i| faces[i].as_ref().expect("sampled frames have a face"))
            .collect();
        let crops = aligned_faces(&sampled_in, &sampled_faces, SCORE_CROP)?;
        let input = ClipInput {
            name: &name,
            frames: &frames,
            faces: &all_faces,
            samples: &samples,
            crops: &crops,
        };
        let wants_strip = strip.filter(|s| s.clip.as_ref().map_or(k == 0, |c| *c == file));
        for (setting, config) in &all {
            let (row, outputs) =
                measure_clip(model, &input, setting, config.clone(), scorers, label)?;
            eprintln!("{}", row_line(&row));
            rows.push(row);
            if let Some(s) = wants_strip.filter(|_| setting == STRIP_SETTING) {
                write_strip(s, &frames, &outputs, &faces)?;
            }
        }
    }
    Ok(rows)
}

/// What the expression and identity columns are, or why they are empty.
pub fn notes(scorers: &FaceScorers, expression: &str) -> String {
    let mut s = format!(
        "\nECS and identity: on every {SAMPLE_EVERY}th frame with a face (at most {SAMPLE_MAX} a clip), the reference face aligned to the LSRF template ({SCORE_CROP} px) in the input and the output frame. "
    );
    s += match (&scorers.fer, fer::fer_label(expression)) {
        (Some(_), Some(_)) => "ECS: share of output faces fer's mini-Xception labels as the target (in brackets: of the input faces). ",
        (Some(_), None) => "ECS: empty (fer has no class for this expression). ",
        (None, _) => "ECS: empty (fer's weights not found; run scripts/setup.sh). ",
    };
    s += if scorers.dlib.is_some() {
        "Identity: mean dlib ResNet distance input vs output face of the same frame / share under 0.6 (the same person).\n"
    } else {
        "Identity: empty (dlib's models not found or --no-fss).\n"
    };
    s
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0} %", 100.0 * v)).unwrap_or_default()
}

/// The ECS cell: output share (input share), over the sampled frames; empty without fer.
fn ecs_cell(r: &ClipRow) -> String {
    match (r.ecs_output, r.ecs_input) {
        (Some(o), Some(i)) => format!(
            "{} ({}) of {}",
            percent(Some(o)),
            percent(Some(i)),
            r.sampled
        ),
        _ => String::new(),
    }
}

/// The identity cell: mean dlib distance / share of the same person; empty without dlib.
fn identity_cell(r: &ClipRow) -> String {
    match (r.identity_distance, r.identity_same) {
        (Some(d), Some(s)) => format!("{d:.3} / {}", percent(Some(s))),
        _ => String::new(),
    }
}

pub fn row_line(r: &ClipRow) -> String {
    format!(
        "| {} | {}x{} | {} | {} | {:.2} / {:.2} | **{:.3}** | {:.1} % of {} | {:.1} | {} | {} |",
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
        r.fps,
        ecs_cell(r),
        identity_cell(r)
    )
}

/// The mean of the values present, `None` when none is.
fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The table as Markdown, with the means per setting.
pub fn markdown(rows: &[ClipRow]) -> String {
    let mut s = String::from(
        "| clip | size | frames | setting | warping error out / in | ratio | coverage | fps | ECS out (in) of sampled frames | identity: dlib distance / same person |\n|---|---|---|---|---|---|---|---|---|---|\n",
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
        if let (Some(o), Some(i)) = (
            mean_of(of.iter().map(|r| r.ecs_output)),
            mean_of(of.iter().map(|r| r.ecs_input)),
        ) {
            s += &format!(
                ", mean ECS {} (input {})",
                percent(Some(o)),
                percent(Some(i))
            );
        }
        if let (Some(d), Some(same)) = (
            mean_of(of.iter().map(|r| r.identity_distance)),
            mean_of(of.iter().map(|r| r.identity_same)),
        ) {
            s += &format!(
                ", mean identity distance {d:.3} (same person {})",
                percent(Some(same))
            );
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn samples_are_every_15th_frame_with_a_face_and_capped() {
        // Faces in frames 0..=9, none in 10..=19, then in 20..=99.
        let has: Vec<bool> = (0..100).map(|i| !(10..20).contains(&i)).collect();
        // Frames with a face, counted from 1: the 15th is frame 24, the 30th frame 39.
        assert_eq!(sample_frames(&has, 15, 10), vec![24, 39, 54, 69, 84, 99]);
        assert_eq!(sample_frames(&has, 15, 2), vec![24, 39]);
        assert_eq!(sample_frames(&has, 1, 3), vec![0, 1, 2]);
        assert!(sample_frames(&[false; 40], 15, 10).is_empty());
        // The strip: from the 3rd frame with a face (index 2), every 4th.
        assert_eq!(frames_with_face(&has, 2, 4, 4), vec![2, 6, 20, 24]);
    }

    fn uniform(w: usize, h: usize, rgb: [u8; 3]) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for px in img.data.chunks_exact_mut(3) {
            px.copy_from_slice(&rgb);
        }
        img
    }

    #[test]
    fn strip_puts_inputs_above_outputs_left_to_right() {
        let ins: Vec<RgbImage> = (0..3).map(|k| uniform(4, 5, [k * 10, 1, 2])).collect();
        let outs: Vec<RgbImage> = (0..3).map(|k| uniform(4, 5, [k * 10, 200, 3])).collect();
        let img = strip(&ins, &outs).unwrap();
        assert_eq!((img.width, img.height), (12, 10));
        for k in 0..3 {
            for (x, y) in [(0, 0), (3, 4)] {
                assert_eq!(img.pixel(4 * k + x, y), ins[k].pixel(x, y));
                assert_eq!(img.pixel(4 * k + x, 5 + y), outs[k].pixel(x, y));
            }
        }
        assert!(strip(&ins, &outs[..2]).is_err());
        assert!(strip(&[], &[]).is_err());
        assert!(strip(&ins[..1], &[uniform(3, 5, [0; 3])]).is_err());
    }

    #[test]
    fn strip_cells_are_the_face_square_of_each_frame() {
        // A 200x100 frame, grey, with a red 20x20 square at (150, 40): the "face".
        let mut frame = uniform(200, 100, [128, 128, 128]);
        for y in 40..60 {
            for x in 150..170 {
                let i = (y * 200 + x) * 3;
                frame.data[i..i + 3].copy_from_slice(&[255, 0, 0]);
            }
        }
        let face = Face {
            bbox: BoxF {
                x: 150.0,
                y: 40.0,
                w: 20.0,
                h: 20.0,
            },
            keypoints: [reggan::detect::Point { x: 0.0, y: 0.0 }; 6],
            score: 1.0,
        };
        // 1.5 x 20 = 30 px, centred on (160, 50).
        let r = square_in_frame(160.0, 50.0, 30.0, 200, 100);
        assert_eq!((r.x, r.y, r.width, r.height), (145, 35, 30, 30));
        // Moved into the frame, shrunk to its height.
        let r = square_in_frame(195.0, 5.0, 130.0, 200, 100);
        assert_eq!((r.x, r.y, r.width, r.height), (100, 0, 100, 100));
        let mut output = frame.clone();
        output.data.iter_mut().for_each(|v| *v = 255 - *v);
        let frames = vec![Frame {
            image: frame.clone(),
            time: Duration::ZERO,
        }];
        let img = strip_of(&frames, &[output.clone()], &[Some(face)], &[0], 15).unwrap();
        assert_eq!((img.width, img.height), (15, 30));
        let square = Rect::new(145, 35, 30, 30);
        let top = crop_resized(&frame, square, 15).unwrap();
        let bottom = crop_resized(&output, square, 15).unwrap();
        assert_eq!(img.data[..15 * 15 * 3], top.data[..]);
        assert_eq!(img.data[15 * 15 * 3..], bottom.data[..]);
        // Centre red, corners grey; inverted below.
        assert_eq!(img.pixel(7, 7), [255, 0, 0]);
        assert_eq!(img.pixel(0, 0), [128, 128, 128]);
        assert_eq!(img.pixel(7, 22), [0, 255, 255]);
        assert!(strip_of(&frames, &[output], &[None], &[0], 15).is_err());
    }

    fn row(setting: &str, scores: FaceScores) -> ClipRow {
        ClipRow {
            clip: "a.mp4".into(),
            setting: setting.into(),
            width: 640,
            height: 480,
            frames: 150,
            warp_error_output: 2.0,
            warp_error_input: 1.0,
            warp_error_ratio: 2.0,
            frames_with_face: 150,
            coverage: 1.0,
            fps: 10.0,
            sampled: 10,
            ecs_output: scores.ecs_output,
            ecs_input: scores.ecs_input,
            identity_distance: scores.identity_distance,
            identity_same: scores.identity_same,
        }
    }

    #[test]
    fn markdown_has_the_expression_and_identity_columns_and_their_means() {
        let full = |o, d| FaceScores {
            ecs_output: Some(o),
            ecs_input: Some(0.1),
            identity_distance: Some(d),
            identity_same: Some(1.0),
        };
        let rows = vec![
            row("default", full(0.8, 0.2)),
            row("default", full(0.6, 0.4)),
            row("tracking off", FaceScores::default()),
        ];
        let md = markdown(&rows);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].ends_with(
            "| ECS out (in) of sampled frames | identity: dlib distance / same person |"
        ));
        assert_eq!(lines[0].matches('|').count(), lines[1].matches('|').count());
        assert!(
            lines[2].ends_with("| 80 % (10 %) of 10 | 0.200 / 100 % |"),
            "{}",
            lines[2]
        );
        // Without the weights the cells are empty, the row as wide.
        assert!(lines[4].ends_with("| 10.0 |  |  |"), "{}", lines[4]);
        assert_eq!(lines[4].matches('|').count(), lines[0].matches('|').count());
        assert!(md.contains("default: mean warping-error ratio 2.000, worst 2.000, mean coverage 100.0 %, mean fps 10.0, mean ECS 70 % (input 10 %), mean identity distance 0.300 (same person 100 %)"), "{md}");
        let off = md.lines().find(|l| l.starts_with("tracking off:")).unwrap();
        assert!(!off.contains("ECS") && !off.contains("identity"), "{off}");
    }

    #[test]
    fn synthetic_clip_is_still_then_moves_within_3_px_a_frame() {
        let mut photo = RgbImage::new(80, 100);
        for (i, v) in photo.data.iter_mut().enumerate() {
            *v = (i % 251) as u8;
        }
        let clip = synthetic_clip(&photo, 40).unwrap();
        assert_eq!(clip.len(), 40);
        let (w, h) = SYNTHETIC_SIZE;
        assert!(clip
            .iter()
            .all(|f| (f.image.width, f.image.height) == (w, h)));
        assert_eq!(clip[11].time, Duration::from_micros(366_666));
        assert!(clip[..13]
            .iter()
            .all(|f| f.image.data == clip[0].image.data));
        assert_ne!(clip[20].image.data, clip[0].image.data);
        // The photo's left edge (the first column differing from the background) moves
        // by at most 3 px and 1 px of turn a frame.
        let bg = RgbImage::from_bgr_mat(&synthetic_background().unwrap()).unwrap();
        let left_edge = |img: &RgbImage| {
            (0..w)
                .find(|&x| img.pixel(x, h / 2) != bg.pixel(x, h / 2))
                .unwrap()
        };
        let edges: Vec<usize> = [12, 13, 20, 21]
            .iter()
            .map(|&i| left_edge(&clip[i].image))
            .collect();
        assert!(edges[0].abs_diff(edges[1]) <= 4, "{edges:?}");
        assert!(edges[2].abs_diff(edges[3]) <= 4, "{edges:?}");
        assert!(edges[0] != edges[3], "{edges:?}");
    }

    #[test]
    fn missing_weights_leave_the_columns_empty_and_say_so() {
        let nowhere = Path::new("/nonexistent/reggan-weights");
        let mut scorers = FaceScorers::load(&nowhere.join("fer.npz"), nowhere, false);
        assert!(scorers.fer.is_none() && scorers.dlib.is_none());
        let notes = notes(&scorers, "happy");
        assert!(
            notes.contains("ECS: empty (fer's weights not found"),
            "{notes}"
        );
        assert!(notes.contains("Identity: empty"), "{notes}");
        let faces = Tensor::zeros([2, 3, 128, 128], (Kind::Float, tch::Device::Cpu));
        let scores = score_faces(&mut scorers, fer::fer_label("happy"), &faces, &faces).unwrap();
        assert_eq!(scores, FaceScores::default());
    }

    /// fer's weights and dlib's models, or None with a message.
    fn scorers_or_skip() -> Option<FaceScorers> {
        let scorers = FaceScorers::load(&fer::default_path(), &fss::default_dir(), false);
        if scorers.fer.is_none() || scorers.dlib.is_none() {
            eprintln!("skipping: needs fer's and dlib's weights (run scripts/setup.sh)");
            return None;
        }
        Some(scorers)
    }

    #[test]
    fn unchanged_faces_score_as_the_input_and_the_same_person() {
        let Some(mut scorers) = scorers_or_skip() else {
            return;
        };
        let photo =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/london-012-neutral.jpg");
        let clip = synthetic_clip(&RgbImage::load(&photo).unwrap(), 40).unwrap();
        let faces = largest(&reference_faces(&clip, reggan::pose::DEFAULT_MAX_YAW).unwrap());
        let picked = [0usize, 20, 39];
        let images: Vec<&RgbImage> = picked.iter().map(|&i| &clip[i].image).collect();
        let found: Vec<&Face> = picked
            .iter()
            .map(|&i| faces[i].as_ref().expect("the London face is found"))
            .collect();
        let crops = aligned_faces(&images, &found, SCORE_CROP).unwrap();
        assert_eq!(crops.size(), vec![3, 3, 128, 128]);
        let label = fer::fer_label("neutral");
        let same = score_faces(&mut scorers, label, &crops, &crops).unwrap();
        assert_eq!(same.ecs_output, same.ecs_input);
        assert!(same.identity_distance.unwrap() < 1e-6, "{same:?}");
        assert_eq!(same.identity_same, Some(1.0));
        // Another face (the crops in reverse, flipped upside down) is not the same.
        let other = crops.flip([2]);
        let changed = score_faces(&mut scorers, label, &crops, &other).unwrap();
        assert!(changed.identity_distance.unwrap() > 0.3, "{changed:?}");
        // Without instruments: nothing, and no failure.
        let none = score_faces(&mut FaceScorers::none(), label, &crops, &crops).unwrap();
        assert_eq!(none, FaceScores::default());
    }

    /// The shipped default model; `None` (and a note) when it is absent.
    fn shipped_model_or_skip() -> Option<PathBuf> {
        let model = reggan::default_model_dir();
        if model.join("model.onnx").is_file() {
            Some(model)
        } else {
            eprintln!("skipping: no model at {}", model.display());
            None
        }
    }

    /// Ten still frames of two London faces side by side, one larger.
    fn two_face_clip() -> Vec<Frame> {
        let photo = RgbImage::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/london-012-neutral.jpg"),
        )
        .unwrap();
        let bgr = photo.to_bgr_mat().unwrap();
        let mut canvas = synthetic_background().unwrap();
        for (x, side) in [(20, 300), (360, 240)] {
            let mut scaled = Mat::default();
            imgproc::resize(
                &bgr,
                &mut scaled,
                Size::new(side, side),
                0.0,
                0.0,
                imgproc::INTER_AREA,
            )
            .unwrap();
            let mut roi = Mat::roi_mut(&mut canvas, Rect::new(x, 90, side, side)).unwrap();
            scaled.copy_to(&mut roi).unwrap();
        }
        let image = RgbImage::from_bgr_mat(&canvas).unwrap();
        (0..10)
            .map(|i| Frame {
                image: image.clone(),
                time: Duration::from_millis(33 * i),
            })
            .collect()
    }

    #[test]
    fn every_face_of_a_clip_counts_not_only_the_largest() {
        let Some(model) = shipped_model_or_skip() else {
            return;
        };
        let frames = two_face_clip();
        let faces = reference_faces(&frames, reggan::pose::DEFAULT_MAX_YAW).unwrap();
        assert!(
            faces.iter().all(|f| f.len() == 2),
            "two faces in every frame"
        );
        assert!(
            faces[0][0].bbox.area() > faces[0][1].bbox.area(),
            "largest first"
        );
        let crops = aligned_faces(&[], &[], SCORE_CROP).unwrap();
        let clip = ClipInput {
            name: "two faces",
            frames: &frames,
            faces: &faces,
            samples: &[],
            crops: &crops,
        };
        let coverage = |max_faces: usize| {
            let mut config = settings("happy").remove(1).1;
            config.max_faces = max_faces;
            let (row, _) = measure_clip(
                &model,
                &clip,
                "default",
                config,
                &mut FaceScorers::none(),
                None,
            )
            .unwrap();
            assert_eq!(row.frames_with_face, 10);
            row.coverage
        };
        // Editing only the largest face changes half of the faces shown.
        assert!((coverage(1) - 0.5).abs() < 1e-9, "{}", coverage(1));
        assert!((coverage(4) - 1.0).abs() < 1e-9, "{}", coverage(4));
    }

    #[test]
    fn the_london_synthetic_clip_is_measured_and_its_strip_written() {
        let Some(model) = shipped_model_or_skip() else {
            return;
        };
        let Some(mut scorers) = scorers_or_skip() else {
            return;
        };
        let photo =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/london-012-neutral.jpg");
        let out =
            std::env::temp_dir().join(format!("reggan-video-strip-{}.png", std::process::id()));
        let mut opts = StripOptions::new(out.clone(), None);
        opts.cell = 64;
        let rows = run_with(
            &model,
            &photo,
            "happy",
            40,
            Vec::new(),
            &mut scorers,
            Some(&opts),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.clip, "london-012-neutral.jpg (synthetic clip)");
            assert_eq!(r.sampled, 2, "frames 14 and 29 of 40 (a face in every one)");
            assert!(r.coverage > 0.9, "{r:?}");
            assert!(r.identity_same.is_some() && r.ecs_output.is_some(), "{r:?}");
        }
        let img = image::open(&out).unwrap().into_rgb8();
        let _ = std::fs::remove_file(&out);
        assert_eq!((img.width(), img.height()), (6 * 64, 2 * 64));
        // The output row differs from the input row (the face was edited).
        let top: Vec<u8> = img.as_raw()[..6 * 64 * 64 * 3].to_vec();
        let bottom: Vec<u8> = img.as_raw()[6 * 64 * 64 * 3..].to_vec();
        assert_ne!(top, bottom);
    }
}
