// SPDX-License-Identifier: MIT OR Apache-2.0

//! `faceexpression`: facial-expression synthesis on raw video, in place.

use gst::glib;
use gst::prelude::*;

mod imp;

/// The target expression (`expression` property). The model must contain it: the six
/// expressions are in every shipped model, `neutral` only in models that list it.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRegganExpression")]
pub enum Expression {
    #[default]
    #[enum_value(name = "Happy", nick = "happy")]
    Happy = 0,
    #[enum_value(name = "Sad", nick = "sad")]
    Sad = 1,
    #[enum_value(name = "Angry", nick = "angry")]
    Angry = 2,
    #[enum_value(name = "Disgusted", nick = "disgusted")]
    Disgusted = 3,
    #[enum_value(name = "Afraid", nick = "afraid")]
    Afraid = 4,
    #[enum_value(name = "Surprised", nick = "surprised")]
    Surprised = 5,
    /// Calms a face; offered by geometry-first (format 2) models that list it.
    #[enum_value(name = "Neutral", nick = "neutral")]
    Neutral = 6,
}

impl Expression {
    /// The name models use for it (one of [`reggan::ALL_EXPRESSIONS`], in the same
    /// order as this enum's values).
    pub fn name(self) -> &'static str {
        reggan::ALL_EXPRESSIONS[self as usize]
    }
}

/// Where the model runs (`device` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRegganDevice")]
pub enum Device {
    #[default]
    #[enum_value(name = "Auto: TensorRT, then CUDA, then CPU", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 1,
    #[enum_value(name = "CUDA (fails at start if unusable)", nick = "cuda")]
    Cuda = 2,
    #[enum_value(name = "TensorRT (fails at start if unusable)", nick = "tensorrt")]
    TensorRt = 3,
}

impl From<Device> for reggan::Device {
    fn from(d: Device) -> Self {
        match d {
            Device::Auto => reggan::Device::Auto,
            Device::Cpu => reggan::Device::Cpu,
            Device::Cuda => reggan::Device::Cuda,
            Device::TensorRt => reggan::Device::TensorRt,
        }
    }
}

/// The face detector (`detector` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRegganDetector")]
pub enum Detector {
    #[default]
    #[enum_value(
        name = "Auto: both BlazeFace models (near and far faces), merged",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "BlazeFace front model (large faces, webcam)", nick = "front")]
    Front = 1,
    #[enum_value(name = "BlazeFace back model (smaller, farther faces)", nick = "back")]
    Back = 2,
    #[enum_value(name = "OpenCV Haar cascade (frontal faces)", nick = "haar")]
    Haar = 3,
}

impl From<Detector> for reggan::DetectorKind {
    fn from(d: Detector) -> Self {
        match d {
            Detector::Auto => reggan::DetectorKind::Auto,
            Detector::Front => reggan::DetectorKind::BlazeFaceFront,
            Detector::Back => reggan::DetectorKind::BlazeFaceBack,
            Detector::Haar => reggan::DetectorKind::Haar,
        }
    }
}

/// How much of the person's own detail is kept (`detail` property).
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstRegganDetail")]
pub enum Detail {
    #[enum_value(
        name = "Off: carry every change, the detail the model smoothed away too",
        nick = "off"
    )]
    Off = 0,
    #[default]
    #[enum_value(
        name = "Fine: keep the face's finest detail (skin, lashes, hair) where the model changed little",
        nick = "fine"
    )]
    Fine = 1,
    #[enum_value(
        name = "Full: also undo the model's coarser smoothing where it changed next to nothing, and its fading of the irises",
        nick = "full"
    )]
    Full = 2,
}

impl From<Detail> for reggan::Detail {
    fn from(d: Detail) -> Self {
        match d {
            Detail::Off => reggan::Detail::Off,
            Detail::Fine => reggan::Detail::Fine,
            Detail::Full => reggan::Detail::Full,
        }
    }
}

glib::wrapper! {
    pub struct FaceExpression(ObjectSubclass<imp::FaceExpression>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Expression::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Device::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Detector::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Detail::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "faceexpression",
        gst::Rank::NONE,
        FaceExpression::static_type(),
    )
}
