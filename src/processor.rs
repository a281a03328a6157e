//! `FrameProcessor`: detect -> align -> model -> composite for one frame, shared by the
//! GStreamer element, the CLI and embedding apps. Flow models (contract v2) move each
//! face's frame pixels by their flow inside the composite stage. Each face's head pose
//! is estimated from its keypoints, and a face turned further than `max_yaw` is left
//! alone (the edit fades out before it, [`crate::pose::yaw_strength`]).

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array4;

use crate::align::{crop_to_planar, Alignment, Template};
use crate::composite::{CompositeOptions, Compositor, Detail};
use crate::detect::{DetectorKind, Face, FaceDetector};
use crate::error::Result;
use crate::frame::FrameMut;
use crate::model::{Device, ExpressionModel};
use crate::pose::{yaw_strength, HeadPose, DEFAULT_MAX_YAW};

/// What the processor should do; everything but the model and detector can change
/// between frames.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub expression: String,
    /// 0 leaves frames bit-identical, 1 is the model's expression, up to 2 exaggerates.
    pub intensity: f32,
    pub max_faces: usize,
    /// Faces narrower than this many pixels are left alone.
    pub min_face_size: f32,
    pub detector: DetectorKind,
    pub device: Device,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    /// How much of the face's own detail is kept where the model's coarse change is
    /// small ([`CompositeOptions::detail`]).
    pub detail: Detail,
    /// Keep the face's colours: chroma change only where the brightness change is
    /// large, no tone edge at the mask's rim ([`CompositeOptions::keep_colour`]).
    pub keep_colour: bool,
    /// Degrees of yaw at which a turned head's edit has faded to nothing (from full
    /// strength 15 degrees before; 90 = never fade).
    pub max_yaw: f32,
}

impl ProcessorConfig {
    pub fn composite_options(&self) -> CompositeOptions {
        CompositeOptions {
            detail: self.detail,
            keep_colour: self.keep_colour,
        }
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            expression: "happy".into(),
            intensity: 1.0,
            max_faces: 4,
            min_face_size: 32.0,
            detector: DetectorKind::Auto,
            device: Device::Auto,
            threads: 1,
            detail: Detail::Fine,
            keep_colour: true,
            max_yaw: DEFAULT_MAX_YAW,
        }
    }
}

/// Time spent in each stage of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    pub detect: Duration,
    pub align: Duration,
    pub model: Duration,
    pub composite: Duration,
}

impl StageTimings {
    pub fn total(&self) -> Duration {
        self.detect + self.align + self.model + self.composite
    }
}

/// What was done to one face.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct FaceEdit {
    /// Head pose estimated from the face's keypoints.
    pub pose: HeadPose,
    /// Share of the configured intensity the face got: 1 for a face turned less than
    /// `max_yaw - 15` degrees, fading to 0 at `max_yaw` (0: left untouched).
    pub strength: f32,
}

/// What one frame's processing found and did.
#[derive(Debug, Clone, Default)]
pub struct FrameReport {
    /// Faces that were edited (at most `max_faces`, largest first), including faces
    /// turned too far to get any of the edit (their `edits` strength is 0).
    pub faces: Vec<Face>,
    /// Pose and strength of each of `faces`, in the same order.
    pub edits: Vec<FaceEdit>,
    /// All faces the detector reported, before the size and count limits.
    pub detected: usize,
    pub timings: StageTimings,
}

pub struct FrameProcessor {
    detector: FaceDetector,
    tracker: Tracker,
    detect_interval: u32,
    frames_since_detection: u32,
    model: ExpressionModel,
    template: Template,
    compositor: Compositor,
    config: ProcessorConfig,
    expression_index: i64,
}

impl FrameProcessor {
    pub fn new(model_dir: &Path, config: ProcessorConfig) -> Result<Self> {
        let model = ExpressionModel::load(model_dir, config.device, config.threads)?;
        let detector = FaceDetector::new(config.detector)?;
        Self::from_parts(model, detector, config)
    }

    pub fn from_parts(
        model: ExpressionModel,
        detector: FaceDetector,
        config: ProcessorConfig,
    ) -> Result<Self> {
        let expression_index = model.manifest().expression_index(&config.expression)? as i64;
        let template = model.manifest().template.clone();
        let compositor = Compositor::for_template(&template, config.composite_options())?;
        Ok(FrameProcessor {
            detector,
            tracker: Tracker::default(),
            detect_interval: 1,
            frames_since_detection: 0,
            model,
            template,
            compositor,
            config,
            expression_index,
        })
    }

    pub fn model(&self) -> &ExpressionModel {
        &self.model
    }
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    pub fn set_expression(&mut self, name: &str) -> Result<()> {
        self.expression_index = self.model.manifest().expression_index(name)? as i64;
        self.config.expression = name.into();
        Ok(())
    }

    pub fn set_intensity(&mut self, intensity: f32) {
        self.config.intensity = intensity.clamp(0.0, 2.0);
    }

    pub fn set_max_faces(&mut self, n: usize) {
        self.config.max_faces = n;
    }

    pub fn set_min_face_size(&mut self, px: f32) {
        self.config.min_face_size = px;
    }

    /// How much of the face's own detail is kept ([`CompositeOptions::detail`]).
    pub fn set_detail(&mut self, detail: Detail) {
        self.config.detail = detail;
        self.compositor.set_options(self.config.composite_options());
    }

    /// Keep the face's colours ([`CompositeOptions::keep_colour`]).
    pub fn set_keep_colour(&mut self, on: bool) {
        self.config.keep_colour = on;
        self.compositor.set_options(self.config.composite_options());
    }

    /// Degrees of yaw at which the edit has faded to nothing (0..=90; 90 never fades).
    pub fn set_max_yaw(&mut self, degrees: f32) {
        self.config.max_yaw = degrees.clamp(0.0, 90.0);
    }

    /// Video: blend each face's keypoints with the same face in the previous frame
    /// (0 = off, the default, right for unrelated still images; 0.5 steadies a webcam).
    pub fn set_smoothing(&mut self, smoothing: f32) {
        self.tracker.smoothing = smoothing.clamp(0.0, 0.95);
    }

    /// Video: search the whole frame every `n` frames; in between, look for each tracked
    /// face only around its last position (new faces appear within `n` frames).
    pub fn set_detect_interval(&mut self, n: u32) {
        self.detect_interval = n.max(1);
    }

    /// Forget tracked faces (new stream, seek).
    pub fn reset_tracking(&mut self) {
        self.tracker.faces.clear();
        self.frames_since_detection = 0;
    }

    /// Detects faces only (no change to the frame).
    pub fn detect(&mut self, frame: &FrameMut) -> Result<Vec<Face>> {
        self.detector.detect(frame, self.config.min_face_size)
    }

    /// Runs the whole path on one frame, in place.
    pub fn process(&mut self, frame: &mut FrameMut) -> Result<FrameReport> {
        let t0 = Instant::now();
        // Full-frame search every `detect_interval` frames; in between, each tracked face
        // is searched for again only around where it was.
        let full = self
            .frames_since_detection
            .is_multiple_of(self.detect_interval);
        let found = if full {
            self.detect(frame)?
        } else {
            let mut near = Vec::new();
            for previous in self.tracker.faces.clone() {
                if let Some(face) = self.detector.detect_near(frame, &previous)? {
                    near.push(face);
                }
            }
            crate::detect::weighted_nms(near, 0.3)
        };
        let faces = self.tracker.update(found);
        self.frames_since_detection = self.frames_since_detection.wrapping_add(1);
        let detect = t0.elapsed();
        let mut report = self.process_faces(frame, faces)?;
        report.timings.detect = detect;
        Ok(report)
    }

    /// Runs align -> model -> composite for faces found elsewhere (e.g. a tracker).
    pub fn process_faces(
        &mut self,
        frame: &mut FrameMut,
        mut faces: Vec<Face>,
    ) -> Result<FrameReport> {
        let mut report = FrameReport {
            detected: faces.len(),
            ..Default::default()
        };
        faces.retain(|f| f.bbox.w >= self.config.min_face_size);
        faces.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
        // A face whose keypoints admit no similarity transform (a detector glitch) is
        // left alone rather than failing the whole frame.
        let t = Instant::now();
        let template = &self.template;
        let (faces, alignments): (Vec<Face>, Vec<Alignment>) = faces
            .into_iter()
            .filter_map(|f| Alignment::for_face(&f, template).ok().map(|a| (f, a)))
            .take(self.config.max_faces)
            .unzip();
        let edits: Vec<FaceEdit> = faces
            .iter()
            .map(|f| {
                let pose = HeadPose::estimate(&f.keypoints);
                FaceEdit {
                    pose,
                    strength: yaw_strength(pose.yaw, self.config.max_yaw),
                }
            })
            .collect();
        let edited: Vec<usize> = (0..faces.len())
            .filter(|&i| edits[i].strength > 0.0)
            .collect();
        if edited.is_empty() || self.config.intensity == 0.0 {
            report.faces = faces;
            report.edits = edits;
            return Ok(report);
        }

        let s = self.template.size;
        let mut batch = Array4::<f32>::zeros((edited.len(), 3, s, s));
        for (slot, &i) in edited.iter().enumerate() {
            let crop = alignments[i].warp_crop(frame)?;
            let mut slot = batch.index_axis_mut(ndarray::Axis(0), slot);
            crop_to_planar(
                &crop,
                frame.layout(),
                slot.as_slice_mut().expect("standard layout"),
            )?;
        }
        report.timings.align = t.elapsed();

        let t = Instant::now();
        let expressions = vec![self.expression_index; edited.len()];
        let out = self.model.run_with_flow(batch.view(), &expressions)?;
        report.timings.model = t.elapsed();

        // Composite covers the flow warp of the frame too (both are per-face pixel work).
        let t = Instant::now();
        for (slot, &i) in edited.iter().enumerate() {
            let crop = batch.index_axis(ndarray::Axis(0), slot);
            let result = out.face.index_axis(ndarray::Axis(0), slot);
            let flow = out
                .flow
                .as_ref()
                .map(|f| f.index_axis(ndarray::Axis(0), slot));
            self.compositor.apply_with_flow(
                frame,
                crop.as_slice().expect("standard layout"),
                result.as_slice().expect("standard layout"),
                flow.as_ref()
                    .map(|f| f.as_slice().expect("standard layout")),
                &alignments[i],
                self.config.intensity * edits[i].strength,
            )?;
        }
        report.timings.composite = t.elapsed();
        report.faces = faces;
        report.edits = edits;
        Ok(report)
    }
}

/// Associates faces across frames by overlap and smooths their geometry, so the crop
/// (and with it the synthesised expression) does not jitter with detector noise.
#[derive(Debug, Default)]
struct Tracker {
    smoothing: f32,
    faces: Vec<Face>,
}

impl Tracker {
    fn update(&mut self, found: Vec<Face>) -> Vec<Face> {
        let a = self.smoothing;
        let smoothed: Vec<Face> = found
            .into_iter()
            .map(|f| {
                let prev = self
                    .faces
                    .iter()
                    .map(|p| (p.bbox.iou(&f.bbox), p))
                    .filter(|(iou, _)| *iou > 0.3)
                    .max_by(|x, y| x.0.total_cmp(&y.0))
                    .map(|(_, p)| p);
                match prev {
                    Some(p) if a > 0.0 => blend(p, &f, a),
                    _ => f,
                }
            })
            .collect();
        self.faces = smoothed.clone();
        smoothed
    }
}

fn blend(prev: &Face, new: &Face, a: f32) -> Face {
    let mix = |p: f32, n: f32| a * p + (1.0 - a) * n;
    let mut out = new.clone();
    out.bbox.x = mix(prev.bbox.x, new.bbox.x);
    out.bbox.y = mix(prev.bbox.y, new.bbox.y);
    out.bbox.w = mix(prev.bbox.w, new.bbox.w);
    out.bbox.h = mix(prev.bbox.h, new.bbox.h);
    for (k, kp) in out.keypoints.iter_mut().enumerate() {
        kp.x = mix(prev.keypoints[k].x, new.keypoints[k].x);
        kp.y = mix(prev.keypoints[k].y, new.keypoints[k].y);
    }
    out
}
