//! Face tracking for video: one home for following faces from frame to frame.
//!
//! Each tracked face's keypoints and box are moved from the previous frame to this one
//! by the motion of the face's own texture (pyramidal Lucas-Kanade optical flow on the
//! keypoints and nearby corners, a similarity fitted with RANSAC), then pulled towards
//! the detector's answer through a One Euro filter (Casiez, Roussel and Vogel, CHI 2012).
//! Because the filter's state is moved with the face first, it only smooths what the
//! detector disagrees with the optical flow about (its jitter), never the head's own
//! motion: the crop stays still when the head is still and follows at once when it moves.
//!
//! The tracker also decides how present each face is (for fades): a face found after the
//! stream's first frame fades in, a face the detector loses keeps its last geometry for
//! a few frames and then fades out instead of popping.

use std::collections::HashMap;

use opencv::core::{Mat, Point2f, Rect, Size, TermCriteria, Vector};
use opencv::prelude::*;
use opencv::{calib3d, imgproc, video};

use crate::detect::{BoxF, Face, Point};
use crate::error::Result;
use crate::frame::FrameMut;

/// One Euro filter parameters (cutoffs in Hz; values in face widths, time in seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneEuroParams {
    /// Cutoff frequency when the value is still: lower = steadier, more lag on slow moves.
    pub min_cutoff: f32,
    /// How fast the cutoff rises with speed (per face width per second): higher = less
    /// lag on fast moves, more jitter.
    pub beta: f32,
    /// Cutoff of the low-pass filter on the derivative.
    pub d_cutoff: f32,
}

impl Default for OneEuroParams {
    /// Tuned on the talking-head clips in `../shared/data/video` with
    /// `trainer/examples/tune_tracking.rs` (the temporal warping error inside the face of
    /// `reggan-train eval --video`), and beta 0 beat 1, 2 and 4. Optical flow carries
    /// the head's motion, so the filter only sees the detector's disagreement with it,
    /// where speed adaptation buys nothing; when optical flow fails the filter restarts
    /// from the detection instead of lagging (see [`FaceTracker::update`]). With the
    /// detector looking at a face every frame, min_cutoff 0.3 Hz was best (1 and 0.1 no
    /// better); looking every third frame, with the edit's low-pass, the mean
    /// warping-error ratio was 1.121 / 1.112 / 1.100 at 1 / 0.3 / 0.1 Hz.
    fn default() -> Self {
        OneEuroParams {
            min_cutoff: 0.1,
            beta: 0.0,
            d_cutoff: 1.0,
        }
    }
}

/// Smoothing factor of an exponential low-pass with cutoff `cutoff` Hz sampled every
/// `dt` seconds: 1 / (1 + tau / dt), tau = 1 / (2 pi cutoff).
pub fn smoothing_factor(dt: f32, cutoff: f32) -> f32 {
    let tau = 1.0 / (2.0 * std::f32::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

/// A One Euro filter on one scalar signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneEuroFilter {
    pub params: OneEuroParams,
    state: Option<(f32, f32, f64)>,
}

impl OneEuroFilter {
    pub fn new(params: OneEuroParams) -> Self {
        OneEuroFilter {
            params,
            state: None,
        }
    }

    /// The filtered value of `x` observed at time `t` (seconds). The first sample passes
    /// unchanged; a sample at the same or an earlier time than the last changes nothing.
    pub fn filter(&mut self, x: f32, t: f64) -> f32 {
        let Some((x_prev, dx_prev, t_prev)) = self.state else {
            self.state = Some((x, 0.0, t));
            return x;
        };
        let dt = (t - t_prev) as f32;
        if dt <= 0.0 {
            return x_prev;
        }
        let p = self.params;
        let dx = (x - x_prev) / dt;
        let dx_hat = dx_prev + smoothing_factor(dt, p.d_cutoff) * (dx - dx_prev);
        let cutoff = p.min_cutoff + p.beta * dx_hat.abs();
        // x_prev + a * (x - x_prev) rather than a * x + (1 - a) * x_prev: a constant
        // signal stays exactly constant (bit-identical frames for a still picture).
        let x_hat = x_prev + smoothing_factor(dt, cutoff) * (x - x_prev);
        self.state = Some((x_hat, dx_hat, t));
        x_hat
    }

    /// The last filtered value, if any.
    pub fn value(&self) -> Option<f32> {
        self.state.map(|s| s.0)
    }

    /// Moves the filter's last value to where the signal was seen to go by other means
    /// (optical flow), keeping its derivative and time.
    pub fn move_to(&mut self, x: f32) {
        if let Some(s) = self.state.as_mut() {
            s.0 = x;
        }
    }
}

/// How faces are followed and faded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingOptions {
    /// The One Euro filter on keypoints and box (None: raw detections, no filter).
    pub filter: Option<OneEuroParams>,
    /// Move faces by pyramidal Lucas-Kanade optical flow between frames.
    pub optical_flow: bool,
    /// Frames a lost face keeps its last geometry at full strength.
    pub hold_frames: u32,
    /// Frames over which a new face fades in and a lost one fades out (after the hold).
    pub fade_frames: u32,
    /// While optical flow follows every face confidently, the detector looks for them
    /// (around where they are, and in the whole frame when that is due) only every
    /// this many frames, or every [`LOOK_FRAMES_PER_FACE`] frames per face when that
    /// is more, each face on its own turn, so the looks are spread over the frames
    /// (four faces at 1280x720, still scene: 95th percentile of the core's frame time
    /// 16.1-17.6 ms when all were looked for on the same frame, 12.2-15.2 in turn, one
    /// sitting); in between, optical flow alone carries them. 1: every frame (with one
    /// face).
    pub search_interval: u32,
    /// Cutoff (Hz) of a low-pass on each followed face's edit in its aligned crop (the
    /// change as the compositor will carry it back, and a flow model's flow), moved
    /// with the face's own motion inside the crop
    /// ([`EditSmoother`]), so the edit does not shimmer with every small change of the
    /// input; None: each frame's own edit.
    pub edit_cutoff: Option<f32>,
}

impl TrackingOptions {
    /// Each frame's detections as they are: no filter, no optical flow, no fades.
    pub fn raw() -> Self {
        TrackingOptions {
            filter: None,
            optical_flow: false,
            hold_frames: 0,
            fade_frames: 1,
            search_interval: 1,
            edit_cutoff: None,
        }
    }
}

impl Default for TrackingOptions {
    fn default() -> Self {
        TrackingOptions {
            filter: Some(OneEuroParams::default()),
            optical_flow: true,
            hold_frames: 2,
            fade_frames: 3,
            // Looking at a followed face every 1 / 2 / 3 / 4 frames gave a mean
            // warping-error ratio of 1.179 / 1.184 / 1.187 / 1.190 without the edit's
            // low-pass, and 1.111 at both 2 and 3 with it; each look is 2 ms at 720p.
            // With optical flow on a 64 px copy and the low-pass of the shaped change
            // (seven clips, 150 frames): 1.062 / 1.062 / 1.061 at every 3 / 4 / 5
            // frames, worst 1.098 / 1.099 / 1.099, coverage 100 % each.
            search_interval: 5,
            // Chosen on the seven talking-head clips (`trainer/examples/tune_tracking.rs`,
            // models/mr). 90 frames each, when the raw model output was smoothed: the
            // mean warping-error ratio was 1.184 with no low-pass, 1.162 / 1.154 /
            // 1.145 / 1.133 / 1.121 / 1.111 / 1.103 at 8 / 4 / 2 / 1 / 0.5 / 0.25 / 0.1
            // Hz. Since the change is smoothed as the compositor shapes it (150 frames,
            // d10 / d14 / d19, the worst three): 1.091 / 1.110 / 1.123 at 0.25 Hz,
            // 1.084 / 1.102 / 1.105 at 0.15, 1.080 / 1.098 / 1.095 at 0.1, 1.077 /
            // 1.093 / 1.086 at 0.05. 0.1 Hz is the highest with every clip under 1.10.
            // Its cost: the memory is resampled along the crop's motion every frame, so
            // a longer one softens the edit's finest detail a little (seven clips, every
            // 15th frame: fer's ECS 77 % at 0.25 Hz, 74 % at 0.1; dlib distance input to
            // output 0.330 against 0.316). Bicubic resampling kept the detail (0.354)
            // but flickered more (1.085 mean); a fine band low-passed at 1 Hz beside the
            // coarse one at 0.1 kept 0.329 but left d19 at 1.115.
            // The low-pass only holds what changes without the crop changing (the
            // weight of the new edit rises to 1 where the crop moved, see
            // `EDIT_MOTION_SIGMA`): a smile the person makes passes at once, while the
            // model's answer to a slow change of light lags by about 1.6 s (the time
            // constant). A plain low-pass, not moved with the face, made it worse (the
            // edit has to follow the mouth).
            edit_cutoff: Some(0.1),
        }
    }
}

/// A face as the tracker sees it in the current frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedFace {
    /// Filtered geometry.
    pub face: Face,
    /// 0..1: how much of the edit the face gets (fades in and out).
    pub presence: f32,
    /// Stable id for as long as the face is followed.
    pub id: u64,
}

const IDENTITY: [f32; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

/// With several faces, each confidently followed face is looked for at most every
/// this many frames per face: their looks together cost about half a look a frame
/// (a look is the front model on the face's neighbourhood, about 2 ms at 1280x720),
/// however many faces there are. Between looks optical flow carries a face; only its
/// turning (yaw, which the keypoints show and a similarity does not) waits for the
/// next look, at most 8 frames with four faces. On a 2x2 mosaic of four talking-head
/// clips (1024x1024, models/mr, 150 frames) looking at each face every 4 / 8 / 16
/// frames gave a warping-error ratio of 1.073 / 1.073 / 1.071, coverage 100 % each;
/// four faces at 1280x720 (still) spent 4.0 ms a frame on detection at every 4 frames
/// and about 2.5 ms at every 8.
pub const LOOK_FRAMES_PER_FACE: u32 = 2;

/// Number of filtered values per face: 6 keypoints (x, y) and the box (x, y, w, h).
const VALUES: usize = 16;

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    /// Geometry the tracker reports (filtered, moved by optical flow).
    face: Face,
    filters: [OneEuroFilter; VALUES],
    /// Frames since the detector last found it.
    missed: u32,
    /// Frames since the detector last looked for it on its own turn (see
    /// [`FaceTracker::due`]).
    carried: u32,
    presence: f32,
    /// Optical flow followed it from the previous frame.
    flow_ok: bool,
    /// Corners optical flow follows on it, where they are in the last frame (found
    /// again when too few are left).
    corners: Vec<Point>,
    /// Its neighbourhood in the last frame, for optical flow (none until
    /// [`FaceTracker::remember`] saw it).
    patch: Option<FlowPatch>,
    /// Face width when first found: the filters work in these units.
    scale: f32,
    /// Geometry when first found: the filters work on offsets from it (a still face
    /// then comes out bit-exactly where it was found).
    origin: [f32; VALUES],
}

/// Follows faces across the frames of one stream.
#[derive(Debug)]
pub struct FaceTracker {
    pub options: TrackingOptions,
    tracks: Vec<Track>,
    /// Size of the last frame (a new size forgets every face).
    frame_size: Option<Size>,
    /// Frames seen since the last reset.
    frames: u64,
    next_id: u64,
}

impl FaceTracker {
    pub fn new(options: TrackingOptions) -> Self {
        FaceTracker {
            options,
            tracks: Vec::new(),
            frame_size: None,
            frames: 0,
            next_id: 0,
        }
    }

    /// Forgets every face (new stream, seek, new frame size).
    pub fn reset(&mut self) {
        self.tracks.clear();
        self.frame_size = None;
        self.frames = 0;
    }

    /// How many faces are followed.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// True when no face is followed.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Where each followed face is expected in the frame given to the last [`predict`].
    pub fn predicted(&self) -> Vec<Face> {
        self.tracks.iter().map(|t| t.face.clone()).collect()
    }

    /// False when a face was lost or optical flow could not follow it: the next
    /// detection should search the whole frame.
    pub fn confident(&self) -> bool {
        self.tracks.iter().all(|t| t.missed == 0 && t.flow_ok)
    }

    /// Which followed faces (in [`predicted`](Self::predicted)'s order) the detector
    /// should look for on this frame. While every face is followed confidently (see
    /// [`confident`](Self::confident)), each is looked for every
    /// [`TrackingOptions::search_interval`] frames, or, with more faces, every
    /// [`LOOK_FRAMES_PER_FACE`] frames per face (each look costs the same per face, so
    /// confidently followed faces cost about half a look a frame however many there
    /// are); their looks are spread over the frames in between, so no frame pays for
    /// more than one of them. Otherwise (or without optical flow) every face, every
    /// frame.
    pub fn due(&self) -> Vec<bool> {
        let every = self.look_interval();
        let all = !self.options.optical_flow || !self.confident();
        self.tracks
            .iter()
            .map(|t| all || t.carried + 1 >= every)
            .collect()
    }

    /// True when there is a face and the detector need look for none on this frame
    /// (see [`due`](Self::due)).
    pub fn may_skip_search(&self) -> bool {
        !self.is_empty() && !self.due().contains(&true)
    }

    /// Frames between two looks at a confidently followed face.
    fn look_interval(&self) -> u32 {
        let faces = self.tracks.len() as u32;
        let per_face = if faces > 1 {
            LOOK_FRAMES_PER_FACE * faces
        } else {
            1
        };
        self.options.search_interval.max(per_face)
    }

    /// Moves every followed face to where optical flow says it went in `frame`.
    pub fn predict(&mut self, frame: &FrameMut) -> Result<()> {
        if !self.options.optical_flow {
            return Ok(());
        }
        let size = Size::new(frame.width() as i32, frame.height() as i32);
        if self.frame_size.replace(size).is_some_and(|s| s != size) {
            // A new frame size: nothing from before applies.
            self.tracks.clear();
        }
        for track in &mut self.tracks {
            // Only the face's own neighbourhood is read (no grey copy of the whole
            // frame), in the same place as in the last frame.
            let Some(last) = track.patch.take() else {
                continue;
            };
            let now = last.same_place_in(frame)?;
            let motion = similarity_flow(&last, &now, &track.face, &mut track.corners)?;
            track.flow_ok = motion.is_some();
            if let Some(m) = motion.filter(|m| *m != IDENTITY) {
                move_track(track, &m);
            }
            track.patch = Some(now);
        }
        Ok(())
    }

    /// Keeps each followed face's neighbourhood in `frame` (the frame just searched,
    /// before any edit) for the next [`predict`](Self::predict): the patch from
    /// `predict` while the face stays well inside it, a new one where the face moved
    /// towards its edge, changed scale, or was just found.
    pub fn remember(&mut self, frame: &FrameMut) -> Result<()> {
        if !self.options.optical_flow {
            return Ok(());
        }
        let size = Size::new(frame.width() as i32, frame.height() as i32);
        self.frame_size = Some(size);
        for track in &mut self.tracks {
            let (region, factor) = flow_region(&track.face.bbox, size);
            let fits = track
                .patch
                .as_ref()
                .is_some_and(|p| p.factor == factor && p.holds(&track.face.bbox, size));
            if !fits {
                track.patch = Some(FlowPatch::of(frame, region, factor)?);
            }
        }
        Ok(())
    }

    /// A frame the detector did not look at (see [`TrackingOptions::search_interval`]):
    /// optical flow alone carries the faces, none counts as lost, new ones go on fading
    /// in. Returns the followed faces.
    pub fn carry(&mut self) -> Vec<TrackedFace> {
        self.frames += 1;
        let step = 1.0 / self.options.fade_frames.max(1) as f32;
        for track in &mut self.tracks {
            carry_track(track, step);
        }
        self.followed()
    }

    fn followed(&self) -> Vec<TrackedFace> {
        self.tracks
            .iter()
            .map(|t| TrackedFace {
                face: t.face.clone(),
                presence: t.presence,
                id: t.id,
            })
            .collect()
    }

    /// Takes this frame's detections (time `t` in seconds), returns the followed faces.
    pub fn update(&mut self, detections: Vec<Face>, t: f64) -> Vec<TrackedFace> {
        let looked = vec![true; self.tracks.len()];
        self.update_looked(detections, &looked, t)
    }

    /// Like [`update`](Self::update), when the detector looked only for the followed
    /// faces marked in `looked` ([`predicted`](Self::predicted)'s order; see
    /// [`due`](Self::due)) and for new ones: the others are carried by optical flow.
    pub fn update_looked(
        &mut self,
        detections: Vec<Face>,
        looked: &[bool],
        t: f64,
    ) -> Vec<TrackedFace> {
        let first_frame = self.frames == 0;
        self.frames += 1;
        let mut unmatched: Vec<Option<Face>> = detections.into_iter().map(Some).collect();
        let step = 1.0 / self.options.fade_frames.max(1) as f32;
        let every = self.look_interval();
        for (k, track) in self.tracks.iter_mut().enumerate() {
            if !looked.get(k).copied().unwrap_or(true) {
                carry_track(track, step);
                continue;
            }
            // A look on the face's own turn starts its interval again; a look forced
            // on it (another face was lost) leaves its turn where it was, so the faces'
            // looks stay spread over the frames.
            track.carried = if track.carried + 1 >= every {
                0
            } else {
                track.carried + 1
            };
            let best = unmatched
                .iter()
                .enumerate()
                .filter_map(|(i, d)| d.as_ref().map(|d| (i, d.bbox.iou(&track.face.bbox))))
                .filter(|(_, iou)| *iou > 0.3)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => {
                    let found = unmatched[i].take().expect("matched once");
                    if !track.flow_ok {
                        // Optical flow lost the face (fast motion, blur): the filter's
                        // state is stale, start again from the detection.
                        restart(track, &found);
                    }
                    observe(track, &found, t, self.options.filter);
                    track.missed = 0;
                    track.presence = (track.presence + step).min(1.0);
                }
                None => {
                    track.missed += 1;
                    if track.missed > self.options.hold_frames {
                        track.presence -= step;
                    }
                }
            }
        }
        self.tracks.retain(|t| t.presence > 1e-6);
        self.start(unmatched.into_iter().flatten(), t, first_frame);
        self.followed()
    }

    /// Like [`carry`](Self::carry), on a frame where the detector looked only for new
    /// faces (`new`, none overlapping a followed one): they start being followed.
    pub fn carry_adding(&mut self, new: Vec<Face>, t: f64) -> Vec<TrackedFace> {
        self.carry();
        self.start(new.into_iter(), t, false);
        self.followed()
    }

    /// Starts following `faces` found at time `t`.
    fn start(&mut self, faces: impl Iterator<Item = Face>, t: f64, first_frame: bool) {
        let step = 1.0 / self.options.fade_frames.max(1) as f32;
        for face in faces {
            let mut track = Track {
                id: self.next_id,
                face: face.clone(),
                filters: [OneEuroFilter::new(self.options.filter.unwrap_or_default()); VALUES],
                missed: 0,
                carried: 0,
                // Nothing to pop from on a stream's first frame (and a still picture
                // gets the whole edit at once).
                presence: if first_frame { 1.0 } else { step },
                flow_ok: true,
                corners: Vec::new(),
                patch: None,
                scale: face.bbox.w.max(1.0),
                origin: face_values(&face),
            };
            self.next_id += 1;
            observe(&mut track, &face, t, self.options.filter);
            self.tracks.push(track);
            // Its first look on the frame the fewest others are due.
            let carried = self.quietest_phase();
            self.tracks.last_mut().expect("just pushed").carried = carried;
        }
    }

    /// The `carried` count that puts a face's next look on the coming frame (of one
    /// look interval) on which the fewest of the other faces are due.
    fn quietest_phase(&self) -> u32 {
        let every = self.look_interval();
        let mut looks = vec![0usize; every as usize];
        let others = &self.tracks[..self.tracks.len().saturating_sub(1)];
        for t in others {
            // Due in `every - 1 - carried` frames (now if already due).
            let wait = (every - 1).saturating_sub(t.carried);
            looks[wait as usize] += 1;
        }
        let wait = (0..every)
            .rev()
            .min_by_key(|&w| looks[w as usize])
            .unwrap_or(every - 1);
        every - 1 - wait
    }
}

impl Default for FaceTracker {
    fn default() -> Self {
        Self::new(TrackingOptions::default())
    }
}

fn face_values(f: &Face) -> [f32; VALUES] {
    let mut v = [0.0; VALUES];
    for (k, p) in f.keypoints.iter().enumerate() {
        v[2 * k] = p.x;
        v[2 * k + 1] = p.y;
    }
    v[12..].copy_from_slice(&[f.bbox.x, f.bbox.y, f.bbox.w, f.bbox.h]);
    v
}

fn set_face_values(f: &mut Face, v: &[f32; VALUES]) {
    for (k, p) in f.keypoints.iter_mut().enumerate() {
        p.x = v[2 * k];
        p.y = v[2 * k + 1];
    }
    f.bbox = BoxF {
        x: v[12],
        y: v[13],
        w: v[14],
        h: v[15],
    };
}

/// A frame on which the detector did not look for `track`: optical flow alone carries
/// it, it does not count as lost, and it goes on fading in (`step` a frame).
fn carry_track(track: &mut Track, step: f32) {
    track.carried += 1;
    track.presence = (track.presence + step).min(1.0);
}

/// Restarts a track's filters at `found`.
fn restart(track: &mut Track, found: &Face) {
    let params = track.filters[0].params;
    track.filters = [OneEuroFilter::new(params); VALUES];
    track.scale = found.bbox.w.max(1.0);
    track.origin = face_values(found);
    track.face = found.clone();
}

/// Filters a detection into the track. Values are filtered in units of the face's
/// width when it was found (fixed, so the detector's jitter in width adds none), so the
/// same parameters suit a 60 px and a 600 px face.
fn observe(track: &mut Track, found: &Face, t: f64, params: Option<OneEuroParams>) {
    let Some(params) = params else {
        track.face = found.clone();
        return;
    };
    let scale = track.scale;
    let raw = face_values(found);
    let mut out = [0.0; VALUES];
    for i in 0..VALUES {
        let f = &mut track.filters[i];
        f.params = params;
        let o = track.origin[i];
        out[i] = o + f.filter((raw[i] - o) / scale, t) * scale;
    }
    track.face.score = found.score;
    set_face_values(&mut track.face, &out);
}

/// Applies the similarity `m` (2x3, row-major) to a track's geometry and filter state.
fn move_track(track: &mut Track, m: &[f32; 6]) {
    let apply = |p: Point| Point {
        x: m[0] * p.x + m[1] * p.y + m[2],
        y: m[3] * p.x + m[4] * p.y + m[5],
    };
    let f = &mut track.face;
    f.keypoints = f.keypoints.map(apply);
    // The box keeps its axis alignment: its centre moves, its size scales.
    let scale = (m[0] * m[0] + m[3] * m[3]).sqrt();
    let c = apply(Point {
        x: f.bbox.x + f.bbox.w / 2.0,
        y: f.bbox.y + f.bbox.h / 2.0,
    });
    let (w, h) = (f.bbox.w * scale, f.bbox.h * scale);
    f.bbox = BoxF {
        x: c.x - w / 2.0,
        y: c.y - h / 2.0,
        w,
        h,
    };
    let values = face_values(f);
    for ((filter, v), o) in track.filters.iter_mut().zip(values).zip(track.origin) {
        filter.move_to((v - o) / track.scale);
    }
}

/// A face's neighbourhood in one frame, as optical flow reads it: `region` of the
/// frame (sides a multiple of `factor`) in grey (OpenCV's BT.601 weights), shrunk by
/// `factor`.
#[derive(Debug, Clone)]
struct FlowPatch {
    region: Rect,
    factor: i32,
    grey: Mat,
}

impl FlowPatch {
    fn of(frame: &FrameMut, region: Rect, factor: i32) -> Result<Self> {
        let mut grey = Mat::default();
        let code = frame.layout().to_grey_code();
        imgproc::cvt_color_def(&Mat::roi(&frame.as_mat()?, region)?, &mut grey, code)?;
        Ok(FlowPatch {
            region,
            factor,
            grey: shrunk(grey, factor)?,
        })
    }

    /// The same region of another frame.
    fn same_place_in(&self, frame: &FrameMut) -> Result<Self> {
        Self::of(frame, self.region, self.factor)
    }

    /// True while the face `b` with half its width of margin on every side (what
    /// optical flow may need to follow it to the next frame) lies inside the region,
    /// where the frame allows.
    fn holds(&self, b: &BoxF, frame: Size) -> bool {
        let m = b.w.max(b.h) / 2.0;
        let r = &self.region;
        let (x0, y0) = ((b.x - m).max(0.0), (b.y - m).max(0.0));
        let x1 = (b.x + b.w + m).min(frame.width as f32);
        let y1 = (b.y + b.h + m).min(frame.height as f32);
        x0 >= r.x as f32
            && y0 >= r.y as f32
            && x1 <= (r.x + r.width) as f32
            && y1 <= (r.y + r.height) as f32
    }
}

/// Points optical flow follows on a face: its four alignment keypoints and up to 40
/// corners inside its box `b` (the keypoints alone sit on smooth skin and drift): the
/// `followed` ones from the last frame while at least [`MIN_FOLLOWED_CORNERS`] are
/// left (finding new ones costs about 0.2 ms a face), else new ones.
fn points_to_follow(
    grey: &Mat,
    keypoints: [Point; 4],
    b: &BoxF,
    followed: &[Point],
) -> Result<Vector<Point2f>> {
    let size = grey.size()?;
    if followed.len() >= MIN_FOLLOWED_CORNERS {
        return Ok(keypoints
            .iter()
            .chain(followed)
            .map(|p| Point2f::new(p.x, p.y))
            .collect());
    }
    let x0 = b.x.max(0.0).floor() as i32;
    let y0 = b.y.max(0.0).floor() as i32;
    let x1 = ((b.x + b.w).ceil() as i32).min(size.width);
    let y1 = ((b.y + b.h).ceil() as i32).min(size.height);
    let mut points: Vector<Point2f> = keypoints.iter().map(|p| Point2f::new(p.x, p.y)).collect();
    if x1 - x0 < 8 || y1 - y0 < 8 {
        return Ok(points);
    }
    let roi = Mat::roi(grey, Rect::new(x0, y0, x1 - x0, y1 - y0))?;
    let mut corners = Vector::<Point2f>::new();
    imgproc::good_features_to_track(
        &roi,
        &mut corners,
        40,
        0.01,
        (b.w / 16.0).max(2.0) as f64,
        &opencv::core::no_array(),
        3,
        false,
        0.04,
    )?;
    for c in corners {
        points.push(Point2f::new(c.x + x0 as f32, c.y + y0 as f32));
    }
    Ok(points)
}

/// Fewer corners than this left on a face: find new ones.
const MIN_FOLLOWED_CORNERS: usize = 20;

/// Faces wider than this are followed on a smaller copy of the frame (halved until
/// they fit, at most three times): a 3-level pyramid on 32-64 px of face follows it as
/// well as on 400, at a fraction of the work. Against 128: on a mosaic of four talking
/// heads of 120-150 px the warping-error ratio stayed 1.073, on the seven clips 1.062
/// (worst 1.095 -> 1.098), coverage 100 %, the synthetic path was followed within 1.49
/// px (1.51), and four faces' optical flow at 1280x720 fell from 1.7-2.1 to 1.0 ms.
const FLOW_FACE_WIDTH: f32 = 64.0;

/// Where optical flow looks for a face in `b`, in a frame of `size`: the box with three
/// quarters of a face width of margin on each side (more than the half a face width a
/// 3-level pyramid can follow between two frames), and the factor (1, 2, 4 or 8) it is
/// shrunk by. (A whole face width cost 0.3-0.4 ms more a frame at 1280x720, in the grey
/// patch and the pyramids, and changed nothing on the talking-head clips.)
fn flow_region(b: &BoxF, size: Size) -> (Rect, i32) {
    let margin = 0.75 * b.w.max(b.h);
    let x0 = ((b.x - margin).floor() as i32).clamp(0, size.width - 1);
    let y0 = ((b.y - margin).floor() as i32).clamp(0, size.height - 1);
    let x1 = ((b.x + b.w + margin).ceil() as i32).clamp(x0 + 1, size.width);
    let y1 = ((b.y + b.h + margin).ceil() as i32).clamp(y0 + 1, size.height);
    let mut factor = 1;
    while factor < 8 && b.w / factor as f32 > FLOW_FACE_WIDTH {
        factor *= 2;
    }
    // Sides a multiple of the factor: area averaging at a fractional ratio is several
    // times slower.
    let (w, h) = (x1 - x0, y1 - y0);
    let trim = |side: i32| (side - side % factor).max(factor.min(side));
    (Rect::new(x0, y0, trim(w), trim(h)), factor)
}

/// `grey` (sides a multiple of `factor`, a power of 2) shrunk by `factor`: halved
/// again and again, each time by bilinear sampling at the centre of each 2x2 block,
/// which is their exact mean (a quarter of the cost of area averaging).
fn shrunk(grey: Mat, factor: i32) -> Result<Mat> {
    let (mut w, mut h) = (grey.cols(), grey.rows());
    let mut out = grey;
    let mut f = factor;
    while f > 1 {
        let mut next = Mat::default();
        halve(&out, &mut next, &mut w, &mut h)?;
        out = next;
        f /= 2;
    }
    Ok(out)
}

/// `from` (`w` x `h`, updated) at half size.
fn halve(
    from: &impl opencv::core::ToInputArray,
    to: &mut Mat,
    w: &mut i32,
    h: &mut i32,
) -> Result<()> {
    (*w, *h) = ((*w / 2).max(1), (*h / 2).max(1));
    imgproc::resize(from, to, Size::new(*w, *h), 0.0, 0.0, imgproc::INTER_LINEAR)?;
    Ok(())
}

/// The similarity (2x3, row-major) that carries the face from `previous` to `current`,
/// or None when too few points were followed to trust it. `corners` (frame pixels) are
/// the corners followed into `previous`, and become those followed into `current`.
///
/// Optical flow runs on the face's neighbourhood only (`FlowPatch`), not the whole
/// frame (its image pyramids were most of its cost: 2 ms for a 1280x720 frame), and on
/// a shrunk copy when the face is large.
fn similarity_flow(
    previous: &FlowPatch,
    current: &FlowPatch,
    face: &Face,
    corners: &mut Vec<Point>,
) -> Result<Option<[f32; 6]>> {
    let (region, factor) = (previous.region, previous.factor);
    let (ox, oy, f) = (region.x as f32, region.y as f32, factor as f32);
    let to_local = |p: Point| Point {
        x: (p.x - ox) / f,
        y: (p.y - oy) / f,
    };
    let bbox = &face.bbox;
    let corner = to_local(Point {
        x: bbox.x,
        y: bbox.y,
    });
    let local_box = BoxF {
        x: corner.x,
        y: corner.y,
        w: bbox.w / f,
        h: bbox.h / f,
    };
    let (previous, current) = (&previous.grey, &current.grey);
    let inside = |p: &&Point| {
        p.x >= bbox.x && p.y >= bbox.y && p.x < bbox.x + bbox.w && p.y < bbox.y + bbox.h
    };
    let followed: Vec<Point> = corners
        .iter()
        .filter(inside)
        .map(|&p| to_local(p))
        .collect();
    corners.clear();
    let keypoints = face.alignment_points().map(to_local);
    let from = points_to_follow(previous, keypoints, &local_box, &followed)?;
    if from.len() < 6 {
        return Ok(None);
    }
    let mut to = Vector::<Point2f>::new();
    let mut status = Vector::<u8>::new();
    let mut err = Vector::<f32>::new();
    let win = ((local_box.w / 8.0).round() as i32).clamp(9, 31) | 1;
    video::calc_optical_flow_pyr_lk(
        &previous,
        &current,
        &from,
        &mut to,
        &mut status,
        &mut err,
        Size::new(win, win),
        3,
        TermCriteria::new(
            opencv::core::TermCriteria_COUNT + opencv::core::TermCriteria_EPS,
            30,
            0.01,
        )?,
        0,
        1e-4,
    )?;
    let to_frame = |p: Point2f| Point2f::new(p.x * f + ox, p.y * f + oy);
    let (mut a, mut b) = (Vector::<Point2f>::new(), Vector::<Point2f>::new());
    // Index in `from` of each followed point.
    let mut index = Vec::with_capacity(from.len());
    for i in 0..from.len() {
        if status.get(i)? == 1 {
            a.push(to_frame(from.get(i)?));
            b.push(to_frame(to.get(i)?));
            index.push(i);
        }
    }
    if a.len() < 6 {
        return Ok(None);
    }
    let mut inliers = Mat::default();
    let threshold = (face.bbox.w as f64 / 100.0).max(1.0);
    let m = calib3d::estimate_affine_partial_2d(
        &a,
        &b,
        &mut inliers,
        calib3d::RANSAC,
        threshold,
        2000,
        0.99,
        10,
    )?;
    let kept = opencv::core::count_non_zero(&inliers)? as usize;
    if m.empty() || kept < 6 || kept * 2 < a.len() {
        return Ok(None);
    }
    // The corners (not the keypoints) that moved with the face, for the next frame.
    let keypoint_count = keypoints.len();
    for (k, &i) in index.iter().enumerate() {
        if i >= keypoint_count && *inliers.at::<u8>(k as i32)? != 0 {
            let p = b.get(k)?;
            corners.push(Point { x: p.x, y: p.y });
        }
    }
    let mut out = [0.0f32; 6];
    for (i, v) in out.iter_mut().enumerate() {
        *v = *m.at_2d::<f64>((i / 3) as i32, (i % 3) as i32)? as f32;
    }
    // Rounding noise on an unchanged picture is no motion: a still frame stays exact.
    let tiny = out
        .iter()
        .zip(IDENTITY)
        .enumerate()
        .all(|(i, (v, e))| (v - e).abs() < if i % 3 == 2 { 1e-3 } else { 1e-5 });
    Ok(Some(if tiny { IDENTITY } else { out }))
}

/// A low-pass over time of each followed face's edit, moved with the face: values in
/// the face's aligned crop (so the edit stays on the face while the head moves), and
/// the last edit carried along the face's own motion inside the crop (a talking mouth)
/// before it is blended with the new one, as in blind video temporal consistency
/// (Bonneel et al. 2015; Lai et al. 2018). Where the crop shows something the last one
/// did not (teeth appear, an occlusion), the new edit passes as it is.
#[derive(Default)]
pub struct EditSmoother {
    memory: HashMap<u64, EditMemory>,
    flow: Option<opencv::core::Ptr<video::DISOpticalFlow>>,
}

impl std::fmt::Debug for EditSmoother {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditSmoother")
            .field("faces", &self.memory.len())
            .finish()
    }
}

struct EditMemory {
    /// The last edit's planes and the grey of the crop it was made on, interleaved
    /// per pixel (r, g, b, grey for an appearance edit), so that one `remap` carries
    /// them all: 0.46 ms a 128 px face against 0.60 with four single-channel remaps
    /// on converted maps (four faces at 1280x720: the model stage's median 3.4-3.5
    /// against 3.7-3.9 ms a frame).
    last: Vec<f32>,
    /// That grey as 8 bits, for the dense flow.
    grey: Mat,
    time: f64,
}

/// Grey-level difference between a crop pixel and where it was in the last crop over
/// which the last edit is no longer trusted there (Gaussian fall-off).
pub const EDIT_MOTION_SIGMA: f32 = 12.0;

impl EditSmoother {
    /// Replaces `change` (face `id`'s edit at time `t` seconds: planes of `size` x
    /// `size`, on the crop `crop`, planar RGB in [0, 1]) by its motion-compensated
    /// low-passed value at `cutoff` Hz. Returns false, leaving `change` as it was, for
    /// a face seen for the first time.
    pub fn smooth(
        &mut self,
        id: u64,
        t: f64,
        cutoff: f32,
        crop: &[f32],
        size: usize,
        change: &mut [f32],
    ) -> Result<bool> {
        let grey = crop_grey(crop, size)?;
        let Some(memory) = self
            .memory
            .get_mut(&id)
            .filter(|m| m.last.len() == change.len() + size * size)
        else {
            let mut last = vec![0.0; change.len() + size * size];
            remember(&mut last, change, grey.data_bytes()?);
            self.memory.insert(
                id,
                EditMemory {
                    last,
                    grey,
                    time: t,
                },
            );
            return Ok(false);
        };
        let dt = (t - memory.time) as f32;
        let a = if dt > 0.0 {
            smoothing_factor(dt, cutoff)
        } else {
            0.0
        };
        memory.time = t.max(memory.time);
        let dis = match self.flow.as_mut() {
            Some(d) => d,
            None => self.flow.insert(Self::dense_flow()?),
        };
        // Backward flow: where each pixel of this crop was in the last one.
        let mut flow = Mat::default();
        dis.calc(&grey, &memory.grey, &mut flow)?;
        let n = size * size;
        let planes = change.len() / n;
        let last =
            Mat::new_rows_cols_with_data(size as i32, (size * (planes + 1)) as i32, &memory.last)?;
        let mut carried = Mat::default();
        imgproc::remap(
            &last.reshape(planes as i32 + 1, size as i32)?,
            &mut carried,
            &positions_from_flow(flow)?,
            &Mat::default(),
            imgproc::INTER_LINEAR,
            opencv::core::BORDER_REPLICATE,
            opencv::core::Scalar::default(),
        )?;
        // The new edit's weight per pixel: `a`, rising to 1 where the crop changed (by
        // grey-level difference: a table of 256).
        let by_difference: [f32; 256] = std::array::from_fn(|d| {
            let d = d as f32 / EDIT_MOTION_SIGMA;
            1.0 - (-d * d).exp() * (1.0 - a)
        });
        let carried = carried.reshape(1, 0)?;
        let carried = carried.data_typed::<f32>()?;
        let weights: Vec<f32> = carried
            .chunks_exact(planes + 1)
            .zip(grey.data_bytes()?)
            .map(|(last, &now)| {
                // Half up by a saturating cast (`f32::round` is a libm call per pixel).
                let difference = ((f32::from(now) - last[planes]).abs() + 0.5) as usize;
                by_difference[difference.min(255)]
            })
            .collect();
        // Back to the change's planes.
        for (p, plane) in change.chunks_exact_mut(n).enumerate() {
            let pixels = plane
                .iter_mut()
                .zip(carried.chunks_exact(planes + 1))
                .zip(&weights);
            for ((v, last), &w) in pixels {
                let l = last[p];
                *v = l + w * (*v - l);
            }
        }
        remember(&mut memory.last, change, grey.data_bytes()?);
        memory.grey = grey;
        Ok(true)
    }

    /// DIS optical flow at its fastest preset, its patches searched down to half the
    /// crop's resolution (the preset stops at a quarter) every 6 px, without the
    /// variational refinement. Chosen on the seven talking-head clips (models/mr, 150
    /// frames each): the mean / worst warping-error ratio, and the cost on a 128 px crop,
    ///
    /// | finest scale, patch stride, refinement rounds | mean | worst | ms |
    /// |---|---|---|---|
    /// | 2, 4, 0 (the preset) | 1.099 | 1.163 | 0.11 |
    /// | 2, 4, 2 | 1.094 | 1.151 | 0.19 |
    /// | 1, 8, 0 | 1.091 | 1.146 | 0.19 |
    /// | 1, 6, 0 | 1.078 | 1.123 | 0.26 |
    /// | 1, 4, 0 | 1.072 | 1.114 | 0.48 |
    /// | 1, 4, 2 | 1.067 | 1.111 | 0.76 |
    ///
    /// The edit has to follow the mouth inside the crop; a coarser flow leaves it
    /// sliding. (OpenCV corrupts its heap with a patch stride above the patch size, 8.)
    fn dense_flow() -> Result<opencv::core::Ptr<video::DISOpticalFlow>> {
        let mut dis = video::DISOpticalFlow::create(video::DISOpticalFlow_PRESET_ULTRAFAST)?;
        dis.set_finest_scale(1)?;
        dis.set_patch_stride(6)?;
        dis.set_variational_refinement_iterations(0)?;
        Ok(dis)
    }

    /// Forgets faces no longer followed.
    pub fn retain(&mut self, ids: &[u64]) {
        self.memory.retain(|id, _| ids.contains(id));
    }

    pub fn clear(&mut self) {
        self.memory.clear();
    }
}

/// The luma of a planar RGB crop in [0, 1], as 8-bit grey.
fn crop_grey(crop: &[f32], size: usize) -> Result<Mat> {
    let n = size * size;
    let mut grey = Mat::new_rows_cols_with_default(
        size as i32,
        size as i32,
        opencv::core::CV_8UC1,
        opencv::core::Scalar::all(0.0),
    )?;
    let (r, rest) = crop.split_at(n);
    let (g, b) = rest.split_at(n);
    for (i, v) in grey.data_bytes_mut()?.iter_mut().enumerate() {
        let y = 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i];
        // Half up by a saturating cast: `f32::round` is a libm call per pixel on
        // baseline x86-64.
        *v = (y * 255.0 + 0.5) as u8;
    }
    Ok(grey)
}

/// Writes the edit `change` (planes of the size of `grey`) and the crop's `grey` into
/// `last`, interleaved.
fn remember(last: &mut [f32], change: &[f32], grey: &[u8]) {
    let n = grey.len();
    let planes = change.len() / n.max(1);
    for (p, plane) in change.chunks_exact(n).enumerate() {
        for (l, &v) in last.chunks_exact_mut(planes + 1).zip(plane) {
            l[p] = v;
        }
    }
    for (l, &y) in last.chunks_exact_mut(planes + 1).zip(grey) {
        l[planes] = f32::from(y);
    }
}

/// The dense backward `flow` (CV_32FC2) turned, in place, into the positions `remap`
/// samples: (x + u, y + v).
fn positions_from_flow(mut flow: Mat) -> Result<Mat> {
    let width = flow.cols().max(1) as usize;
    for (y, row) in flow
        .data_typed_mut::<opencv::core::Vec2f>()?
        .chunks_exact_mut(width)
        .enumerate()
    {
        for (x, f) in row.iter_mut().enumerate() {
            f[0] += x as f32;
            f[1] += y as f32;
        }
    }
    Ok(flow)
}
