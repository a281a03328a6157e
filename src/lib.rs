//! reggan core: facial-expression synthesis on video frames.
//!
//! One frame's way: [`detect`] faces (BlazeFace via ONNX Runtime or OpenCV dnn, Haar
//! fallback) ->
//! [`align`] each to the model's template, estimate its head [`pose`] (a face turned
//! too far is left alone) -> run the [`model`] (ONNX Runtime) -> [`composite`] the
//! change back into the frame, keeping the face's own detail and colours (for flow
//! models, after moving the face's own pixels by the model's [`flow`]).
//! In video, faces are followed from frame to frame by the [`track`]er (optical flow and
//! a One Euro filter), fade in and out, and changes of expression ramp.
//! [`FrameProcessor`] ties them together for the GStreamer element, the CLI and other
//! apps. No GStreamer, no LibTorch here.

pub mod align;
pub mod composite;
pub mod detect;
pub mod error;
pub mod flow;
pub mod frame;
pub mod install;
pub mod model;
pub mod pose;
pub mod processor;
pub mod scene;
pub mod track;
pub mod yuv;

pub use align::{Alignment, Template};
pub use composite::{CompositeOptions, Detail, Roi};
pub use detect::{DetectorBackend, DetectorKind, Face, FaceDetector};
pub use error::{Error, Result};
pub use frame::{FrameMut, PixelLayout, RgbImage};
pub use model::{Device, ExpressionModel, Manifest, ModelOutput, ALL_EXPRESSIONS, EXPRESSIONS};
pub use pose::HeadPose;
pub use processor::{
    FaceEdit, FrameProcessor, FrameReport, ProcessorConfig, StageTimings, DEFAULT_TRANSITION,
};
pub use track::{FaceTracker, OneEuroFilter, OneEuroParams, TrackingOptions};
pub use yuv::{Yuv420Bridge, Yuv420FrameMut, Yuv420Layout, Yuv420Range};

/// The model shipped with the project (used when no model is given): `$REGGAN_MODEL`,
/// the installed `models/mr`, the build tree's (search order: [`install`]).
pub fn default_model_dir() -> std::path::PathBuf {
    install::default_model_dir()
}
