//! `FrameProcessor`: detect -> align -> model -> composite for one frame, shared by the
//! GStreamer element, the CLI and embedding apps. Flow models (contract v2) move each
//! face's frame pixels by their flow inside the composite stage. Each face's head pose
//! is estimated from its keypoints, and a face turned further than `max_yaw` is left
//! alone (the edit fades out before it, [`crate::pose::yaw_strength`]).

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array4;

use crate::align::{crop_to_planar, Alignment, Template};
use crate::composite::{CompositeOptions, Compositor, Detail, Roi};
use crate::detect::{DetectorBackend, DetectorKind, Face, FaceDetector, SearchPass};
use crate::error::Result;
use crate::frame::FrameMut;
use crate::model::{Device, ExpressionModel};
use crate::pose::{yaw_strength, HeadPose, DEFAULT_MAX_YAW};
use crate::scene::{SceneSamples, STILL_SCENE_INTERVALS};
use crate::track::{EditSmoother, FaceTracker, TrackedFace, TrackingOptions};

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
    /// Video: how long a change of expression or intensity takes (a cross-fade between
    /// the two results, in stream time; zero = at once).
    pub transition: Duration,
    /// Video: how faces are followed, filtered and faded.
    pub tracking: TrackingOptions,
}

impl ProcessorConfig {
    pub fn composite_options(&self) -> CompositeOptions {
        CompositeOptions {
            detail: self.detail,
            keep_colour: self.keep_colour,
        }
    }
}

/// Video: the whole frame is searched for new faces every this many frames by default
/// (the element, the CLI, `bench`, `eval --video`), so a new face is picked up within 5
/// frames (see [`FrameProcessor::set_detect_interval`]).
pub const DEFAULT_DETECT_INTERVAL: u32 = 5;

/// How long a change of expression or intensity takes in video by default.
pub const DEFAULT_TRANSITION: Duration = Duration::from_millis(300);

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
            transition: DEFAULT_TRANSITION,
            tracking: TrackingOptions::default(),
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
    /// `max_yaw - 15` degrees, fading to 0 at `max_yaw` (0: left untouched), times how
    /// far the face has faded in or out (video).
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
    /// The intensity this frame's edit was made at: the configured one, or mid-ramp
    /// (`transition`) the ramp's (a face's share of it is its `strength`).
    pub intensity: f32,
    /// The frame rectangles the edit may have written (one per edited face, possibly
    /// overlapping); every pixel outside them is untouched. What a caller converting
    /// the frame back to another format has to carry back ([`crate::yuv`]).
    pub changed: Vec<Roi>,
    /// Video: the whole-frame search for new faces that ran on this frame, if any.
    pub whole_frame_search: Option<SearchPass>,
    /// Video: how many followed faces the detector looked for around where they were
    /// on this frame (optical flow alone carried the others).
    pub faces_looked_for: usize,
    pub timings: StageTimings,
}

/// A face's presence (0..1, fades) and, in video, its track id.
type Presence = (f32, Option<u64>);

/// An expression at an intensity: what the edit aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Target {
    expression: i64,
    intensity: f32,
}

/// Where the edit is between two targets: `(1 - w) * from + w * to`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mix {
    from: Target,
    to: Target,
    w: f32,
}

impl Mix {
    fn settled(target: Target) -> Mix {
        Mix {
            from: target,
            to: target,
            w: 1.0,
        }
    }

    fn intensity(&self) -> f32 {
        (1.0 - self.w) * self.from.intensity + self.w * self.to.intensity
    }

    /// Both results are needed (a cross-fade between two expressions).
    fn two_expressions(&self) -> bool {
        self.w < 1.0 && self.from.expression != self.to.expression
    }
}

/// A change of target ramping over stream time.
#[derive(Debug, Clone, Copy)]
struct Transition {
    from: Target,
    to: Target,
    /// Stream time (seconds) the ramp started at; None = settled on `to`.
    start: Option<f64>,
}

impl Transition {
    fn weight(&self, t: f64, duration: Duration) -> f32 {
        match self.start {
            None => 1.0,
            Some(_) if duration.is_zero() => 1.0,
            Some(s) => ((t - s) / duration.as_secs_f64()).clamp(0.0, 1.0) as f32,
        }
    }

    /// Where the edit is at time `t`, starting a new ramp if the target changed.
    fn at(&mut self, target: Target, t: f64, duration: Duration) -> Mix {
        if target != self.to {
            let now = Mix {
                from: self.from,
                to: self.to,
                w: self.weight(t, duration),
            };
            // A ramp from where the edit is now: the expression it shows most, at the
            // intensity it has (no jump in strength when a ramp is interrupted).
            let expression = if now.w < 0.5 {
                now.from.expression
            } else {
                now.to.expression
            };
            self.from = Target {
                expression,
                intensity: now.intensity(),
            };
            self.to = target;
            self.start = Some(t);
        }
        let w = self.weight(t, duration);
        if w >= 1.0 {
            self.start = None;
            self.from = self.to;
        }
        Mix {
            from: self.from,
            to: self.to,
            w,
        }
    }
}

pub struct FrameProcessor {
    detector: FaceDetector,
    tracker: FaceTracker,
    detect_interval: u32,
    frames_since_detection: u32,
    /// Frames of video processed since the last reset.
    frames: u64,
    /// The picture each whole-frame pass (front model, back model) last looked at and
    /// the frame it did: a due pass waits while the picture stays the same
    /// ([`crate::scene`]).
    last_looked: [Option<(SceneSamples, u64)>; 2],
    model: ExpressionModel,
    template: Template,
    compositor: Compositor,
    config: ProcessorConfig,
    expression_index: i64,
    transition: Option<Transition>,
    edits: EditSmoother,
    /// The face's change as the compositor carries it back ([`Compositor::shape`],
    /// 3*S*S), low-passed in video. Faces go through shaping, low-pass and compositing
    /// one at a time, so that their buffers stay in the cache.
    shaped: Vec<f32>,
    /// The expression whose edits `edits` remembers (none during a cross-fade).
    smoothed_expression: Option<i64>,
}

/// The slots of [`FrameProcessor::last_looked`] a pass covers.
fn pass_slots(pass: SearchPass) -> &'static [usize] {
    match pass {
        SearchPass::All => &[0, 1],
        SearchPass::Large => &[0],
        SearchPass::Small => &[1],
    }
}

impl FrameProcessor {
    pub fn new(model_dir: &Path, config: ProcessorConfig) -> Result<Self> {
        let model = ExpressionModel::load(model_dir, config.device, config.threads)?;
        // BlazeFace on the model's runtime and device.
        let backend = DetectorBackend::OnnxRuntime {
            device: config.device,
            threads: config.threads,
        };
        let detector = FaceDetector::with_backend(config.detector, backend)?;
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
        let size = template.size;
        Ok(FrameProcessor {
            detector,
            tracker: FaceTracker::new(config.tracking),
            detect_interval: 1,
            frames_since_detection: 0,
            frames: 0,
            last_looked: [None, None],
            model,
            template,
            compositor,
            config,
            expression_index,
            transition: None,
            edits: EditSmoother::default(),
            shaped: vec![0.0; 3 * size * size],
            smoothed_expression: None,
        })
    }

    pub fn model(&self) -> &ExpressionModel {
        &self.model
    }
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// In video, the change ramps over [`ProcessorConfig::transition`].
    pub fn set_expression(&mut self, name: &str) -> Result<()> {
        self.expression_index = self.model.manifest().expression_index(name)? as i64;
        self.config.expression = name.into();
        Ok(())
    }

    /// In video, the change ramps over [`ProcessorConfig::transition`].
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

    /// Video: how long a change of expression or intensity takes (zero: at once).
    pub fn set_transition(&mut self, duration: Duration) {
        self.config.transition = duration;
    }

    /// Video: how faces are followed, filtered and faded (applies from the next frame).
    pub fn set_tracking(&mut self, options: TrackingOptions) {
        self.config.tracking = options;
        self.tracker.options = options;
    }

    /// Video: search the whole frame every `n` frames; in between, look for each tracked
    /// face only around where optical flow puts it (a face the tracker is unsure of
    /// brings the full search forward; new faces appear within `n` frames). With `n` of
    /// 2 or more, a due search waits while the picture away from the followed faces stays
    /// the same, for at most [`STILL_SCENE_INTERVALS`] intervals ([`crate::scene`]).
    pub fn set_detect_interval(&mut self, n: u32) {
        self.detect_interval = n.max(1);
    }

    /// Forget tracked faces and any running transition (new stream, seek, new size).
    pub fn reset_tracking(&mut self) {
        self.tracker.reset();
        self.frames_since_detection = 0;
        self.frames = 0;
        self.last_looked = [None, None];
        self.transition = None;
        self.edits.clear();
    }

    /// Detects faces only (no change to the frame).
    pub fn detect(&mut self, frame: &FrameMut) -> Result<Vec<Face>> {
        self.detector.detect(frame, self.config.min_face_size)
    }

    fn target(&self) -> Target {
        Target {
            expression: self.expression_index,
            intensity: self.config.intensity,
        }
    }

    /// Runs the whole path on one still picture, in place: every face is searched for in
    /// the whole frame and gets the whole edit; nothing is kept for the next call.
    pub fn process(&mut self, frame: &mut FrameMut) -> Result<FrameReport> {
        let t0 = Instant::now();
        let faces = self.detect(frame)?;
        let detect = t0.elapsed();
        let tracks = vec![(1.0, None); faces.len()];
        let mix = Mix::settled(self.target());
        let mut report = self.edit_faces(frame, faces, tracks, mix, 0.0)?;
        report.timings.detect = detect;
        Ok(report)
    }

    /// Runs the whole path on one frame of a video at stream time `time`, in place: faces
    /// are followed from the previous frame (optical flow, One Euro filter), new faces
    /// fade in, lost ones keep their place for a few frames and fade out, and a change of
    /// expression or intensity ramps over [`ProcessorConfig::transition`].
    pub fn process_video(&mut self, frame: &mut FrameMut, time: Duration) -> Result<FrameReport> {
        let t0 = Instant::now();
        self.tracker.predict(frame)?;
        let t = time.as_secs_f64();
        // The whole frame is searched every `detect_interval` frames (new faces): with
        // tracking and a face followed, the front model on one frame and the back model
        // half an interval later, so that no frame pays for both (with none followed,
        // as on a stream's first frame, both at once). While optical flow follows every face
        // confidently, the faces' own search may be skipped in between
        // (`TrackingOptions::search_interval`).
        let phase = self.frames_since_detection % self.detect_interval;
        let split = self.detect_interval >= 2
            && self.config.tracking.optical_flow
            && self.detector.has_two_passes()
            && !self.tracker.is_empty();
        let due = match (phase, split) {
            (0, false) => Some(SearchPass::All),
            (0, true) => Some(SearchPass::Large),
            (p, true) if p == self.detect_interval / 2 => Some(SearchPass::Small),
            _ => None,
        };
        // The picture now, taken at most once a frame (for a due pass or a forced one).
        let mut scene = None;
        let pass = due.filter(|&pass| self.pass_needed(pass, self.scene_now(frame, &mut scene)));
        let (mut searched, mut looked) = (None, 0);
        let tracked = match (pass, self.tracker.may_skip_search()) {
            (None, true) => self.tracker.carry(),
            // A full-frame pass due on a frame whose search around the followed faces
            // is not: optical flow carries them, the pass only adds new faces.
            (Some(pass), true) => {
                let known = self.tracker.predicted();
                let new =
                    self.detector
                        .detect_new(frame, self.config.min_face_size, &known, pass)?;
                searched = Some(pass);
                self.tracker.carry_adding(new, t)
            }
            (pass, false) => {
                let looks = self.tracker.due();
                let (tracked, ran, near) = self.search(frame, t, pass, &looks)?;
                (searched, looked) = (ran, near);
                tracked
            }
        };
        if let Some(pass) = searched {
            let now = self.scene_now(frame, &mut scene).clone();
            self.full_search_ran(pass, now);
        }
        self.tracker.remember(frame)?;
        self.frames_since_detection = self.frames_since_detection.wrapping_add(1);
        self.frames += 1;
        let detect = t0.elapsed();
        let target = self.target();
        let duration = self.config.transition;
        let mix = self
            .transition
            .get_or_insert(Transition {
                from: target,
                to: target,
                start: None,
            })
            .at(target, t, duration);
        let ids: Vec<u64> = tracked.iter().map(|f| f.id).collect();
        self.edits.retain(&ids);
        let (faces, tracks) = tracked
            .into_iter()
            .map(|f| (f.face, (f.presence, Some(f.id))))
            .unzip();
        let mut report = self.edit_faces(frame, faces, tracks, mix, t)?;
        report.timings.detect = detect;
        report.whole_frame_search = searched;
        report.faces_looked_for = looked;
        Ok(report)
    }

    /// `scene`, sampled from `frame` (with the followed faces where optical flow put
    /// them) unless it already was on this frame.
    fn scene_now<'a>(
        &self,
        frame: &FrameMut,
        scene: &'a mut Option<SceneSamples>,
    ) -> &'a SceneSamples {
        scene.get_or_insert_with(|| {
            let faces: Vec<_> = self.tracker.predicted().iter().map(|f| f.bbox).collect();
            SceneSamples::of(frame, &faces)
        })
    }

    /// Whether a due whole-frame pass runs: when the picture changed away from the
    /// followed faces since the pass last looked (only there can a new face have come),
    /// or it has not looked for [`STILL_SCENE_INTERVALS`] intervals; always with an
    /// interval of 1 (a search on every frame, as asked).
    fn pass_needed(&self, pass: SearchPass, now: &SceneSamples) -> bool {
        if self.detect_interval < 2 {
            return true;
        }
        let limit = u64::from(STILL_SCENE_INTERVALS * self.detect_interval);
        pass_slots(pass)
            .iter()
            .any(|&k| match &self.last_looked[k] {
                None => true,
                Some((then, at)) => self.frames - at >= limit || now.changed_since(then),
            })
    }

    /// A full-frame search ran on the picture `now`: the next is `detect_interval`
    /// frames after the start of this one (its `Large` or `All` pass).
    fn full_search_ran(&mut self, pass: SearchPass, now: SceneSamples) {
        if pass != SearchPass::Small {
            self.frames_since_detection = 0;
        }
        for &k in pass_slots(pass) {
            self.last_looked[k] = Some((now.clone(), self.frames));
        }
    }

    /// Searches for this frame's faces and gives them to the tracker (time `t`); `pass`:
    /// the full-frame search due on this frame, if any; `due`: the followed faces to
    /// look for ([`FaceTracker::due`]). Also returns the full-frame search that ran
    /// (`pass`, or all models when a face was lost) and how many faces were looked for
    /// around where they were.
    fn search(
        &mut self,
        frame: &FrameMut,
        t: f64,
        pass: Option<SearchPass>,
        due: &[bool],
    ) -> Result<(Vec<TrackedFace>, Option<SearchPass>, usize)> {
        // Each tracked face is searched for around where optical flow put it, so its
        // keypoints always come from the same view of it (a still head gives the same
        // keypoints frame after frame). The whole frame is searched when a pass is due,
        // and with every model whenever a face was lost or optical flow could not follow
        // it; it only adds faces not found around a tracked one, nor followed without a
        // look on this frame.
        // (Without tracking, the search around each face only runs between full
        // searches, as before the tracker.)
        let raw = !self.config.tracking.optical_flow;
        let predicted = self.tracker.predicted();
        let mut found = Vec::new();
        let mut carried = Vec::new();
        let mut near_searches = 0;
        for (previous, &look) in predicted.into_iter().zip(due) {
            if !look {
                carried.push(previous);
                continue;
            }
            if raw && pass.is_some() {
                continue;
            }
            near_searches += 1;
            if let Some(face) = self.detector.detect_near(frame, &previous)? {
                found.push(face);
            }
        }
        let mut found = crate::detect::weighted_nms(found, 0.3);
        let looked = due.iter().filter(|&&d| d).count();
        let unsure = !self.tracker.confident() || found.len() < looked;
        let pass = if unsure { Some(SearchPass::All) } else { pass };
        if let Some(pass) = pass {
            // Both BlazeFace models within every interval: the front one alone misses a
            // second person at a webcam's distance (a face a sixth of the frame wide),
            // and a new face must show within `detect_interval` frames.
            let known = [found.as_slice(), carried.as_slice()].concat();
            let new = self
                .detector
                .detect_new(frame, self.config.min_face_size, &known, pass)?;
            found.extend(new);
        }
        Ok((
            self.tracker.update_looked(found, due, t),
            pass,
            near_searches,
        ))
    }

    /// Runs align -> model -> composite for faces found elsewhere (e.g. another tracker).
    pub fn process_faces(&mut self, frame: &mut FrameMut, faces: Vec<Face>) -> Result<FrameReport> {
        let tracks = vec![(1.0, None); faces.len()];
        let mix = Mix::settled(self.target());
        self.edit_faces(frame, faces, tracks, mix, 0.0)
    }

    /// Shapes face `slot`'s change for compositing ([`Compositor::shape`]) into
    /// `self.shaped`.
    fn shape_edit(
        &mut self,
        batch: &Array4<f32>,
        out: &crate::model::ModelOutput,
        slot: usize,
        alignment: &Alignment,
    ) -> Result<()> {
        let crop = batch.index_axis(ndarray::Axis(0), slot);
        let face = out.face.index_axis(ndarray::Axis(0), slot);
        let flow = out
            .flow
            .as_ref()
            .map(|f| f.index_axis(ndarray::Axis(0), slot));
        let shaped = self.compositor.shape(
            crop.as_slice().expect("standard layout"),
            face.as_slice().expect("standard layout"),
            flow.as_ref()
                .map(|f| f.as_slice().expect("standard layout")),
            alignment,
        )?;
        self.shaped.copy_from_slice(shaped);
        Ok(())
    }

    /// Low-passes face `slot`'s shaped change (`self.shaped`) over time, in
    /// place, and a flow model's flow in `out` unless it is the same for every face
    /// ([`ExpressionModel::flow_is_constant`]). What is smoothed is what the frame
    /// will show: the compositor's gates (detail, colour) open and close with each
    /// frame's noise, and smoothing the model's raw output left that to flicker. A flow
    /// model's change is its appearance on the crop warped by its flow, not `out -
    /// crop`: that difference holds the moved texture itself, which a low-pass would
    /// smear from frame to frame.
    fn smooth_edit(
        &mut self,
        batch: &Array4<f32>,
        out: &mut crate::model::ModelOutput,
        slot: usize,
        id: u64,
        time: f64,
        cutoff: f32,
    ) -> Result<()> {
        let s = self.template.size;
        let crop = batch.index_axis(ndarray::Axis(0), slot);
        let crop = crop.as_slice().expect("standard layout");
        let mut flow = out
            .flow
            .as_mut()
            .map(|f| f.index_axis_mut(ndarray::Axis(0), slot));
        let flow = flow
            .as_mut()
            .map(|f| f.as_slice_mut().expect("standard layout"));
        // The change lives on the crop, or the crop moved by the flow: the last one is
        // carried along that image's own motion (for a flow model the warped crop's:
        // at the mouth the crop's motion at x is not the warped crop's, which shows
        // the crop at x + flow).
        let base: &[f32] = if flow.is_some() {
            self.compositor.warped_crop()
        } else {
            crop
        };
        let shaped = &mut self.shaped;
        let n = shaped.len();
        // A flow that does not depend on the face is the same every frame: only the
        // appearance change is low-passed.
        let Some(flow) = flow.filter(|_| !self.model.flow_is_constant()) else {
            self.edits.smooth(id, time, cutoff, base, s, shaped)?;
            return Ok(());
        };
        let mut change = [shaped.as_slice(), flow].concat();
        if self.edits.smooth(id, time, cutoff, base, s, &mut change)? {
            shaped.copy_from_slice(&change[..n]);
            flow.copy_from_slice(&change[n..]);
        }
        Ok(())
    }

    /// Align -> model -> composite; `tracks` gives each face's presence (scaling its
    /// edit: fades) and its track id in video (its edit is low-passed over time), `mix`
    /// is where the edit is between two targets, `time` the stream time in seconds.
    fn edit_faces(
        &mut self,
        frame: &mut FrameMut,
        faces: Vec<Face>,
        tracks: Vec<Presence>,
        mix: Mix,
        time: f64,
    ) -> Result<FrameReport> {
        let mut report = FrameReport {
            detected: faces.len(),
            intensity: mix.intensity(),
            ..Default::default()
        };
        let mut faces: Vec<(Face, Presence)> = faces.into_iter().zip(tracks).collect();
        faces.retain(|(f, _)| f.bbox.w >= self.config.min_face_size);
        faces.sort_by(|a, b| b.0.bbox.area().total_cmp(&a.0.bbox.area()));
        // A face whose keypoints admit no similarity transform (a detector glitch) is
        // left alone rather than failing the whole frame.
        let t = Instant::now();
        let template = &self.template;
        let (faces, alignments): (Vec<(Face, Presence)>, Vec<Alignment>) = faces
            .into_iter()
            .filter_map(|f| Alignment::for_face(&f.0, template).ok().map(|a| (f, a)))
            .take(self.config.max_faces)
            .unzip();
        let (faces, tracks): (Vec<Face>, Vec<Presence>) = faces.into_iter().unzip();
        let edits: Vec<FaceEdit> = faces
            .iter()
            .zip(&tracks)
            .map(|(f, (p, _))| {
                let pose = HeadPose::estimate(&f.keypoints);
                FaceEdit {
                    pose,
                    strength: yaw_strength(pose.yaw, self.config.max_yaw) * p,
                }
            })
            .collect();
        let edited: Vec<usize> = (0..faces.len())
            .filter(|&i| edits[i].strength > 0.0)
            .collect();
        let intensity = mix.intensity();
        if edited.is_empty() || intensity == 0.0 {
            report.faces = faces;
            report.edits = edits;
            return Ok(report);
        }

        let s = self.template.size;
        let n = edited.len();
        // During a cross-fade between two expressions every face runs twice, once per
        // expression, in one batch.
        let runs = if mix.two_expressions() { 2 } else { 1 };
        let mut batch = Array4::<f32>::zeros((runs * n, 3, s, s));
        for (slot, &i) in edited.iter().enumerate() {
            let crop = alignments[i].warp_crop(frame)?;
            let mut slot = batch.index_axis_mut(ndarray::Axis(0), slot);
            crop_to_planar(
                &crop,
                frame.layout(),
                slot.as_slice_mut().expect("standard layout"),
            )?;
        }
        let mut expressions = vec![mix.to.expression; n];
        if runs == 2 {
            let (crops, copies) = batch.view_mut().split_at(ndarray::Axis(0), n);
            let mut copies = copies;
            copies.assign(&crops);
            expressions = [vec![mix.from.expression; n], expressions].concat();
        }
        report.timings.align = t.elapsed();

        let t = Instant::now();
        let mut out = self.model.run_with_flow(batch.view(), &expressions)?;
        if runs == 2 {
            // (1 - w) * from + w * to, for the face and its flow alike.
            let w = mix.w;
            let blend = |a: &mut Array4<f32>| {
                let (mut from, to) = a.view_mut().split_at(ndarray::Axis(0), n);
                from.zip_mut_with(&to, |f, t| *f += w * (*t - *f));
            };
            blend(&mut out.face);
            if let Some(flow) = out.flow.as_mut() {
                blend(flow);
            }
        }
        if self.config.tracking.edit_cutoff.is_some() {
            // An edit is smoothed only against edits of the same expression: a change
            // of expression ramps by itself (the transition), and the memory starts
            // afresh from the new expression's edit.
            let settled = (!mix.two_expressions()).then_some(mix.to.expression);
            if settled.is_none() || self.smoothed_expression != settled {
                self.edits.clear();
            }
            self.smoothed_expression = settled;
        }
        let low_pass = self
            .config
            .tracking
            .edit_cutoff
            .filter(|_| self.smoothed_expression.is_some());
        // The model stage covers the edit's low-pass; compositing covers shaping the
        // change and the flow warps (per-face pixel work).
        let mut model_time = t.elapsed();
        let mut composite_time = Duration::ZERO;
        for (slot, &i) in edited.iter().enumerate() {
            let t = Instant::now();
            self.shape_edit(&batch, &out, slot, &alignments[i])?;
            composite_time += t.elapsed();
            if let (Some(cutoff), (_, Some(id))) = (low_pass, tracks[i]) {
                let t = Instant::now();
                self.smooth_edit(&batch, &mut out, slot, id, time, cutoff)?;
                model_time += t.elapsed();
            }
            let t = Instant::now();
            let flow = out
                .flow
                .as_ref()
                .map(|f| f.index_axis(ndarray::Axis(0), slot));
            let flow = flow
                .as_ref()
                .map(|f| f.as_slice().expect("standard layout"));
            let changed = self.compositor.add_shaped(
                frame,
                &self.shaped,
                flow,
                &alignments[i],
                intensity * edits[i].strength,
            )?;
            report.changed.extend(changed);
            composite_time += t.elapsed();
        }
        report.timings.model = model_time;
        report.timings.composite = composite_time;
        report.faces = faces;
        report.edits = edits;
        Ok(report)
    }
}
