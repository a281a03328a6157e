// SPDX-License-Identifier: MIT OR Apache-2.0

//! Implementation of `faceexpression`.
//!
//! The element is an in-place `VideoFilter` over the packed RGB family. The model and
//! detector load in `start` (so a missing or broken model fails the state change with a
//! message naming the path); every frame then goes through
//! [`reggan::FrameProcessor::process`] and gets one `GstVideoRegionOfInterestMeta` of
//! type "face" per face it considered (with its head pose and the share of the edit it
//! got). Frames go through the processor's video path at their presentation time:
//! faces are followed from frame to frame, fade in and out, and a change of `expression`
//! or `intensity` ramps over `transition-ms` of stream time. `expression`, `intensity`,
//! `max-faces`, `min-face-size`, `detail`, `keep-colour`, `max-yaw`, `transition-ms` and
//! `tracking` apply from the next frame; a new `model`, `device` or `detector` set while
//! streaming is loaded before the next frame (hot swap, blocking that frame). Tracked
//! faces are forgotten on a flushing seek, at a new stream and when the frame size
//! changes (their coordinates belong to the old frames).

use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::BaseTransformMode;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;

use super::{Detail, Detector, Device, Expression};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "faceexpression",
        gst::DebugColorFlags::empty(),
        Some("Facial-expression synthesis"),
    )
});

const DEFAULT_EXPRESSION: Expression = Expression::Happy;
const DEFAULT_INTENSITY: f64 = 1.0;
const MAX_INTENSITY: f64 = 2.0;
const DEFAULT_DEVICE: Device = Device::Auto;
const DEFAULT_DETECTOR: Detector = Detector::Auto;
const DEFAULT_MAX_FACES: u32 = 4;
const MAX_MAX_FACES: u32 = 32;
const DEFAULT_MIN_FACE_SIZE: u32 = 32;
const DEFAULT_THREADS: u32 = 0;
const DEFAULT_DETECT_INTERVAL: u32 = reggan::processor::DEFAULT_DETECT_INTERVAL;
const DEFAULT_TRANSITION_MS: u32 = 300;
const MAX_TRANSITION_MS: u32 = 10_000;
const DEFAULT_TRACKING: bool = true;
/// Stream time per frame for buffers without a timestamp.
const UNTIMED_FRAME: std::time::Duration = std::time::Duration::from_nanos(33_333_333);
const DEFAULT_DETAIL: Detail = Detail::Fine;
const DEFAULT_KEEP_COLOUR: bool = true;
const DEFAULT_MAX_YAW: f64 = reggan::pose::DEFAULT_MAX_YAW as f64;

/// Packed RGB formats go to the processor as they are; 4:2:0 ones (what decoders and
/// cameras give) through `reggan::Yuv420Bridge`, which writes back only the faces,
/// cheaper than a videoconvert on each side.
const FORMATS: [gst_video::VideoFormat; 8] = [
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::I420,
    gst_video::VideoFormat::Nv12,
];

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    model: PathBuf,
    expression: Expression,
    intensity: f64,
    device: Device,
    detector: Detector,
    max_faces: u32,
    min_face_size: u32,
    threads: u32,
    detect_interval: u32,
    transition_ms: u32,
    tracking: bool,
    detail: Detail,
    keep_colour: bool,
    max_yaw: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: reggan::default_model_dir(),
            expression: DEFAULT_EXPRESSION,
            intensity: DEFAULT_INTENSITY,
            device: DEFAULT_DEVICE,
            detector: DEFAULT_DETECTOR,
            max_faces: DEFAULT_MAX_FACES,
            min_face_size: DEFAULT_MIN_FACE_SIZE,
            threads: DEFAULT_THREADS,
            detect_interval: DEFAULT_DETECT_INTERVAL,
            transition_ms: DEFAULT_TRANSITION_MS,
            tracking: DEFAULT_TRACKING,
            detail: DEFAULT_DETAIL,
            keep_colour: DEFAULT_KEEP_COLOUR,
            max_yaw: DEFAULT_MAX_YAW,
        }
    }
}

impl Settings {
    /// What a loaded processor depends on: changing any of these needs a reload.
    fn load_key(&self) -> (PathBuf, Device, Detector, u32) {
        (self.model.clone(), self.device, self.detector, self.threads)
    }

    fn processor_config(&self) -> reggan::ProcessorConfig {
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        reggan::ProcessorConfig {
            expression: self.expression.name().into(),
            intensity: self.intensity as f32,
            max_faces: self.max_faces as usize,
            min_face_size: self.min_face_size as f32,
            detector: self.detector.into(),
            device: self.device.into(),
            threads,
            detail: self.detail.into(),
            keep_colour: self.keep_colour,
            max_yaw: self.max_yaw as f32,
            transition: std::time::Duration::from_millis(self.transition_ms as u64),
            tracking: self.tracking_options(),
        }
    }

    fn tracking_options(&self) -> reggan::TrackingOptions {
        if self.tracking {
            reggan::TrackingOptions::default()
        } else {
            reggan::TrackingOptions::raw()
        }
    }
}

struct State {
    processor: reggan::FrameProcessor,
    loaded: (PathBuf, Device, Detector, u32),
    /// Detection interval last given to the processor (it has no getter for it).
    detect_interval: u32,
    frames: u64,
    /// Width and height of the negotiated frames (None before the first caps).
    frame_size: Option<(u32, u32)>,
    /// Buffers for I420 and NV12 frames.
    yuv: reggan::Yuv420Bridge,
}

#[derive(Default)]
pub struct FaceExpression {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// The execution provider of the loaded model (read-only `provider` property).
    provider: Mutex<String>,
}

/// Maps a core error to the GStreamer error domain that fits it; the message is the
/// core library's, which names the file and the reason.
fn error_message(err: &reggan::Error, what: &str) -> gst::ErrorMessage {
    use reggan::Error as E;
    match err {
        E::Model { .. } | E::Io { .. } | E::Detector { .. } => {
            gst::error_msg!(gst::ResourceError::OpenRead, ("{what}: {err}"), ["{err:?}"])
        }
        E::UnknownExpression { .. } | E::Device(_) => {
            gst::error_msg!(gst::ResourceError::Settings, ("{what}: {err}"), ["{err:?}"])
        }
        _ => gst::error_msg!(gst::LibraryError::Init, ("{what}: {err}"), ["{err:?}"]),
    }
}

impl FaceExpression {
    fn load(&self, settings: &Settings) -> Result<State, gst::ErrorMessage> {
        gst::info!(
            CAT,
            imp = self,
            "loading model {} (device {:?}, detector {:?})",
            settings.model.display(),
            settings.device,
            settings.detector
        );
        let processor = reggan::FrameProcessor::new(&settings.model, settings.processor_config())
            .map_err(|e| error_message(&e, "Cannot load the expression model"))?;
        let provider = processor.model().provider();
        gst::info!(
            CAT,
            imp = self,
            "model {} ({}) runs on {provider}; expressions {:?}",
            settings.model.display(),
            processor.model().manifest().method,
            processor.model().manifest().expressions
        );
        *self.provider.lock().unwrap() = provider.to_string();
        let mut processor = processor;
        processor.set_detect_interval(settings.detect_interval);
        Ok(State {
            processor,
            loaded: settings.load_key(),
            detect_interval: settings.detect_interval,
            frames: 0,
            frame_size: None,
            yuv: reggan::Yuv420Bridge::new(),
        })
    }

    /// Brings the processor in line with the current settings before a frame.
    fn sync(&self, state: &mut State, settings: &Settings) -> Result<(), gst::ErrorMessage> {
        if state.loaded != settings.load_key() {
            let frame_size = state.frame_size;
            *state = self.load(settings)?;
            state.frame_size = frame_size;
            return Ok(());
        }
        let p = &mut state.processor;
        let want = settings.processor_config();
        if p.config().expression != want.expression {
            gst::debug!(CAT, imp = self, "expression -> {}", want.expression);
            p.set_expression(&want.expression)
                .map_err(|e| error_message(&e, "Cannot switch expression"))?;
        }
        if p.config().intensity != want.intensity {
            p.set_intensity(want.intensity);
        }
        if p.config().max_faces != want.max_faces {
            p.set_max_faces(want.max_faces);
        }
        if p.config().min_face_size != want.min_face_size {
            p.set_min_face_size(want.min_face_size);
        }
        if p.config().detail != want.detail {
            p.set_detail(want.detail);
        }
        if p.config().keep_colour != want.keep_colour {
            p.set_keep_colour(want.keep_colour);
        }
        if p.config().max_yaw != want.max_yaw {
            p.set_max_yaw(want.max_yaw);
        }
        if state.detect_interval != settings.detect_interval {
            p.set_detect_interval(settings.detect_interval);
            state.detect_interval = settings.detect_interval;
        }
        if p.config().transition != want.transition {
            p.set_transition(want.transition);
        }
        if p.config().tracking != want.tracking {
            p.set_tracking(want.tracking);
        }
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for FaceExpression {
    const NAME: &'static str = "GstFaceExpression";
    type Type = super::FaceExpression;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for FaceExpression {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb(
                        "Model directory (model.onnx + model.json); default the shipped model. \
                         Set while playing, it is loaded before the next frame",
                    )
                    .default_value(Some(
                        reggan::default_model_dir().to_string_lossy().as_ref(),
                    ))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("expression", DEFAULT_EXPRESSION)
                    .nick("Expression")
                    .blurb("Target facial expression (switching never reloads the model)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("intensity")
                    .nick("Intensity")
                    .blurb("Strength of the expression: 0 leaves frames untouched, 1 is the model's, up to 2 exaggerates")
                    .minimum(0.0)
                    .maximum(MAX_INTENSITY)
                    .default_value(DEFAULT_INTENSITY)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("device", DEFAULT_DEVICE)
                    .nick("Device")
                    .blurb("Where the model runs (set while playing, it reloads before the next frame)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("detector", DEFAULT_DETECTOR)
                    .nick("Detector")
                    .blurb("Face detector (set while playing, it reloads before the next frame)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-faces")
                    .nick("Maximum faces")
                    .blurb("Change at most this many faces per frame, largest first (0: none)")
                    .maximum(MAX_MAX_FACES)
                    .default_value(DEFAULT_MAX_FACES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("min-face-size")
                    .nick("Minimum face size")
                    .blurb("Faces narrower than this many pixels are left alone")
                    .maximum(4096)
                    .default_value(DEFAULT_MIN_FACE_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("detect-interval")
                    .nick("Detection interval")
                    .blurb("Search the whole frame for new faces every N frames (and whenever a followed face is lost; while the picture away from the faces stays still, every 6 N frames); in between, optical flow follows the faces (1: both detection models every frame)")
                    .minimum(1)
                    .maximum(300)
                    .default_value(DEFAULT_DETECT_INTERVAL)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("transition-ms")
                    .nick("Transition")
                    .blurb("Milliseconds of stream time over which a change of expression or intensity cross-fades (0: at once)")
                    .maximum(MAX_TRANSITION_MS)
                    .default_value(DEFAULT_TRANSITION_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("tracking")
                    .nick("Tracking")
                    .blurb("Follow faces with optical flow and a One Euro filter (a still head keeps a still edit), low-pass each face's edit along its own motion, fade faces in and out; off: each frame's raw detections and edits")
                    .default_value(DEFAULT_TRACKING)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("detail", DEFAULT_DETAIL)
                    .nick("Detail")
                    .blurb("Keep the face's own detail where the model smoothed it away: off, fine (skin texture, lashes, hair where the model changed little), full (also the model's coarser smoothing, and the irises' darkness where the model fades them)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("keep-colour")
                    .nick("Keep colour")
                    .blurb("Keep the face's colours (eyes, make-up, skin tone): carry the model's colour changes only at the mouth, and no tone edge at the mask's rim")
                    .default_value(DEFAULT_KEEP_COLOUR)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("max-yaw")
                    .nick("Maximum yaw")
                    .blurb("Degrees a head may turn: the edit fades from full strength 15 degrees before this to nothing at it (90: never fades)")
                    .minimum(0.0)
                    .maximum(90.0)
                    .default_value(DEFAULT_MAX_YAW)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads (0: one per CPU core); applies at the next load")
                    .maximum(256)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("provider")
                    .nick("Execution provider")
                    .blurb("The execution provider that really runs the model (CPU, CUDA, TensorRT); empty before start")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => {
                let model = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(reggan::default_model_dir);
                gst::info!(CAT, imp = self, "model: {}", model.display());
                settings.model = model;
            }
            "expression" => {
                settings.expression = value.get().expect("type checked upstream");
                gst::info!(CAT, imp = self, "expression: {:?}", settings.expression);
            }
            "intensity" => settings.intensity = value.get().expect("type checked upstream"),
            "device" => settings.device = value.get().expect("type checked upstream"),
            "detector" => settings.detector = value.get().expect("type checked upstream"),
            "max-faces" => settings.max_faces = value.get().expect("type checked upstream"),
            "min-face-size" => settings.min_face_size = value.get().expect("type checked upstream"),
            "threads" => settings.threads = value.get().expect("type checked upstream"),
            "detect-interval" => {
                settings.detect_interval = value.get().expect("type checked upstream")
            }
            "transition-ms" => settings.transition_ms = value.get().expect("type checked upstream"),
            "tracking" => settings.tracking = value.get().expect("type checked upstream"),
            "detail" => settings.detail = value.get().expect("type checked upstream"),
            "keep-colour" => settings.keep_colour = value.get().expect("type checked upstream"),
            "max-yaw" => settings.max_yaw = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "provider" {
            return self.provider.lock().unwrap().to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => settings.model.to_string_lossy().to_value(),
            "expression" => settings.expression.to_value(),
            "intensity" => settings.intensity.to_value(),
            "device" => settings.device.to_value(),
            "detector" => settings.detector.to_value(),
            "max-faces" => settings.max_faces.to_value(),
            "min-face-size" => settings.min_face_size.to_value(),
            "threads" => settings.threads.to_value(),
            "detect-interval" => settings.detect_interval.to_value(),
            "transition-ms" => settings.transition_ms.to_value(),
            "tracking" => settings.tracking.to_value(),
            "detail" => settings.detail.to_value(),
            "keep-colour" => settings.keep_colour.to_value(),
            "max-yaw" => settings.max_yaw.to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for FaceExpression {}

impl ElementImpl for FaceExpression {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Facial expression synthesis",
                "Filter/Effect/Video",
                "Changes the facial expression of the faces in the video (RegGAN / masked regression models)",
                "reggan project",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(FORMATS)
                .build();
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for FaceExpression {
    const MODE: BaseTransformMode = BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let state = self.load(&settings)?;
        *self.state.lock().unwrap() = Some(state);
        gst::info!(CAT, imp = self, "started");
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        // A new stream or a seek: tracked faces from before do not apply any more.
        if matches!(
            event.type_(),
            gst::EventType::FlushStop | gst::EventType::StreamStart
        ) {
            if let Some(state) = self.state.lock().unwrap().as_mut() {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{:?}: resetting face tracking",
                    event.type_()
                );
                state.processor.reset_tracking();
            }
        }
        self.parent_sink_event(event)
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(state) = self.state.lock().unwrap().take() {
            gst::info!(CAT, imp = self, "stopped after {} frames", state.frames);
        }
        Ok(())
    }
}

fn pixel_layout(format: gst_video::VideoFormat) -> Option<reggan::PixelLayout> {
    use gst_video::VideoFormat as F;
    use reggan::PixelLayout as L;
    Some(match format {
        F::Rgb => L::Rgb,
        F::Bgr => L::Bgr,
        F::Rgba => L::Rgba,
        F::Bgra => L::Bgra,
        F::Rgbx => L::Rgbx,
        F::Bgrx => L::Bgrx,
        _ => return None,
    })
}

/// One I420 or NV12 frame through the processor: converted to BGRx by the state's
/// bridge, processed, and only the changed rectangles written back into the planes.
fn process_yuv420(
    state: &mut State,
    frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    time: std::time::Duration,
) -> reggan::Result<reggan::FrameReport> {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    if width < 2 || height < 2 {
        // No whole chroma block, so nothing to convert (and no face fits).
        return Ok(reggan::FrameReport::default());
    }
    let format = frame.format();
    // Full range: JPEG's, e.g. a webcam's MJPEG through jpegdec (colorimetry 1:4:0:0).
    let range = match frame.info().colorimetry().range() {
        gst_video::VideoColorRange::Range0_255 => reggan::Yuv420Range::Full,
        _ => reggan::Yuv420Range::Video,
    };
    let strides: Vec<usize> = frame.plane_stride().iter().map(|&s| s as usize).collect();
    let [p0, p1, p2, _] = frame.planes_data_mut();
    let mut yuv = if format == gst_video::VideoFormat::I420 {
        reggan::Yuv420FrameMut::i420(
            [(p0, strides[0]), (p1, strides[1]), (p2, strides[2])],
            width,
            height,
        )?
    } else {
        reggan::Yuv420FrameMut::nv12([(p0, strides[0]), (p1, strides[1])], width, height)?
    }
    .with_range(range);
    let report = {
        let mut packed = state.yuv.unpack(&yuv)?;
        state.processor.process_video(&mut packed, time)?
    };
    state.yuv.pack_changes(&mut yuv, &report.changed)?;
    Ok(report)
}

/// A face box clipped to the frame, in whole pixels; None if nothing is left.
fn clip_box(b: &reggan::detect::BoxF, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
    let x0 = b.x.floor().clamp(0.0, width as f32) as u32;
    let y0 = b.y.floor().clamp(0.0, height as f32) as u32;
    let x1 = (b.x + b.w).ceil().clamp(0.0, width as f32) as u32;
    let y1 = (b.y + b.h).ceil().clamp(0.0, height as f32) as u32;
    (x1 > x0 && y1 > y0).then(|| (x0, y0, x1 - x0, y1 - y0))
}

impl VideoFilterImpl for FaceExpression {
    fn set_info(
        &self,
        incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        outcaps: &gst::Caps,
        out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        // Tracked faces are in pixels of the old frame size: at another size a search
        // around them looks in the wrong place. A format change alone keeps them.
        let size = (in_info.width(), in_info.height());
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            if state.frame_size.is_some_and(|old| old != size) {
                gst::debug!(
                    CAT,
                    imp = self,
                    "frame size {:?} -> {size:?}: resetting face tracking",
                    state.frame_size
                );
                state.processor.reset_tracking();
            }
            state.frame_size = Some(size);
        }
        self.parent_set_info(incaps, in_info, outcaps, out_info)
    }

    fn transform_frame_ip(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings.lock().unwrap().clone();
        let mut state_guard = self.state.lock().unwrap();
        let state = state_guard.as_mut().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("Not started"));
            gst::FlowError::NotNegotiated
        })?;
        if let Err(msg) = self.sync(state, &settings) {
            self.post_error_message(msg);
            return Err(gst::FlowError::Error);
        }

        let format = frame.format();
        let (width, height) = (frame.width(), frame.height());
        // Transitions run in stream time: the buffer's timestamp, else a nominal 30 fps.
        let time = frame
            .buffer()
            .pts()
            .map(std::time::Duration::from)
            .unwrap_or(UNTIMED_FRAME * state.frames as u32);
        let report = match format {
            gst_video::VideoFormat::I420 | gst_video::VideoFormat::Nv12 => {
                process_yuv420(state, frame, time)
            }
            _ => {
                let layout = pixel_layout(format).ok_or_else(|| {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ("Unsupported format {format:?}")
                    );
                    gst::FlowError::NotNegotiated
                })?;
                let stride = frame.plane_stride()[0] as usize;
                let data = frame.plane_data_mut(0).map_err(|e| {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Failed,
                        ("Cannot map the frame: {e}")
                    );
                    gst::FlowError::Error
                })?;
                reggan::FrameMut::new(data, width as usize, height as usize, stride, layout)
                    .and_then(|mut f| state.processor.process_video(&mut f, time))
            }
        }
        .map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                ("Processing a {width}x{height} {format:?} frame failed: {e}"),
                ["{e:?}"]
            );
            gst::FlowError::Error
        })?;
        state.frames += 1;

        let t = &report.timings;
        gst::debug!(
            CAT,
            imp = self,
            "frame {}: {} faces detected, {} changed; detect {:.2?} align {:.2?} model {:.2?} composite {:.2?} total {:.2?}",
            state.frames,
            report.detected,
            report.faces.len(),
            t.detect,
            t.align,
            t.model,
            t.composite,
            t.total()
        );
        if report.faces.is_empty() {
            return Ok(gst::FlowSuccess::Ok);
        }

        // SAFETY: the frame maps a writable buffer (BaseTransform made it writable for
        // in-place processing) and no slice of its pixel data is alive any more. Adding
        // a meta only touches the buffer's meta list, never the mapped memory.
        let buffer = unsafe { gst::BufferRef::from_mut_ptr((*frame.as_mut_ptr()).buffer) };
        for (face, edit) in report.faces.iter().zip(&report.edits) {
            let Some(rect) = clip_box(&face.bbox, width, height) else {
                continue;
            };
            let mut meta = gst_video::VideoRegionOfInterestMeta::add(buffer, "face", rect);
            meta.add_param(
                gst::Structure::builder("detection")
                    .field("confidence", face.score as f64)
                    .field("expression", settings.expression.name())
                    .field("intensity", settings.intensity)
                    .field("yaw", edit.pose.yaw as f64)
                    .field("pitch", edit.pose.pitch as f64)
                    .field("roll", edit.pose.roll as f64)
                    .field("strength", edit.strength as f64)
                    .field(
                        "applied-intensity",
                        report.intensity as f64 * edit.strength as f64,
                    )
                    .build(),
            );
        }
        Ok(gst::FlowSuccess::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_box_clips_to_the_frame() {
        let b = |x, y, w, h| reggan::detect::BoxF { x, y, w, h };
        assert_eq!(
            clip_box(&b(10.2, 20.7, 30.0, 40.0), 100, 100),
            Some((10, 20, 31, 41))
        );
        assert_eq!(
            clip_box(&b(-5.0, -5.0, 20.0, 20.0), 100, 100),
            Some((0, 0, 15, 15))
        );
        assert_eq!(
            clip_box(&b(90.0, 90.0, 20.0, 20.0), 100, 100),
            Some((90, 90, 10, 10))
        );
        assert_eq!(clip_box(&b(120.0, 0.0, 20.0, 20.0), 100, 100), None);
    }
}
